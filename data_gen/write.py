"""Stage 5, write: pairs files -> TFRecord shards + index + manifest.json + contact sheet.

  python -m data_gen.write --pairs 'DIR/pairs-*.tar' --out OUT --num-shards N [--prefix synth]
      [--concepts BANK] [--manifest-extra stage_stats.json ...] [--worker-index I --num-workers W]

Streams the tars written by data_gen.images (KEY.jpg + KEY.json, or KEY.txt when there is
no .json; so any webdataset tar of JPEGs works) in sorted path order, then member order, and
sends record j to shard j % N, so the same pairs give byte-identical shards. The JPEG bytes
are stored as generated (no re-encoding). Writes OUT/PREFIX-0000i-of-0000N.tfrecord + .index
with synthclip_jax.data.shard_files, each under a temporary name, renamed when complete.
The int64 `concept` feature holds a row's `concept_ids`, or its balance-stage concept names as
line numbers of the --concepts bank (recorded in the manifest as `concept_bank`); names with no
bank given are counted and printed, not stored. A `web_caption` string in a sample's .json
(data.images --shapes writes one) becomes the record's `web_caption` (CLIPS's second caption).

Workers: --num-shards is the number of output shards (as in import_pairs); W machines split
them with --worker-index I --num-workers W (worker I writes shards s with s % W == I; every
worker walks all tar headers, and reads only its own records' bytes). Finished shards are
skipped. Whichever worker finds all shards present writes OUT/contact_sheet.png and then
OUT/manifest.json, the completion marker: {num_records, shards: [{file, records, sha256,
index_sha256}], inputs (pairs files, sizes, records), settings (images_settings.json of each
pairs folder: model, seeds, guidance, ...), sources, stages (the --manifest-extra JSON files,
by file stem)}. An OUT with a manifest for the same inputs is left as is.
OUT/.fingerprint-write.json records the pairs files (size, mtime), --num-shards, --prefix and
--concepts the shards are made of; a run with others is refused (--overwrite: redo).
Checked while writing, each an error naming the tar and member: a tar cut short (no end-of-
archive marker, or a member cut mid-way), metadata that is not a JSON object with a string
caption, an image that is not a readable JPEG.
"""
import glob
import io
import json
import math
import os
import random
import tarfile
from collections import Counter
from pathlib import Path

from data_gen import fingerprint
from data_gen.common import add_worker_args, check_worker_args, file_sha256, progress, stage_parser
from data_gen.concepts import load_bank
from data_gen.tars import TarCutShort, check_ended, read_member
from synthclip_jax.run.files import atomic_path
from synthclip_jax.data.image_decode import decode_rgb
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.shard_index import write_combined_index
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.config import cli_paths


def iter_samples(paths: list[str]):
    """Yields (path, key, {ext: TarInfo}, open tar) per sample, in file then member order.

    Streams one tar at a time, reading headers only (tarfile seeks past the data), so memory
    does not grow with the dataset; a sample's members are contiguous, as webdataset has them.
    A tar without its end-of-archive marker (cut short) is an error naming the file.
    """
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                key, members = None, {}
                for m in tar:
                    base = os.path.basename(m.name)
                    if not m.isfile() or base.startswith(".") or "." not in base:
                        continue
                    k, ext = base.split(".", 1)
                    if k != key and members:
                        yield _checked(path, key, members), tar
                        members = {}
                    key, members[ext.lower()] = k, m
                check_ended(tar, path)  # before the last sample, which a cut may have cropped
                if members:
                    yield _checked(path, key, members), tar
        except TarCutShort as e:
            raise SystemExit(f"write: {e}") from None
        except tarfile.TarError as e:
            raise SystemExit(f"write: {path}: cannot read tar file ({e}); cut short or "
                             "damaged? copy it again") from None


def _checked(path, key, members):
    if "jpg" not in members or not {"json", "txt"} & members.keys():
        raise SystemExit(f"write: {path}: sample {key!r} needs KEY.jpg and KEY.json or KEY.txt")
    return path, key, members


def concept_ids_of(inp: dict, bank_ids: dict | None, where: str) -> list | None:
    """The int64 `concept` feature of a pairs row: its ids if it has ids, its concept names
    (balance writes those) looked up in the bank, or None for names with no bank given."""
    for k in ("concept_ids", "concepts"):
        value = inp.get(k)
        if isinstance(value, list) and all(isinstance(c, int) for c in value):
            return value
    names = inp.get("concepts")
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        return []
    if bank_ids is None:
        return None
    missing = [c for c in names if c not in bank_ids]
    if missing:
        raise SystemExit(f"{where}: concepts {missing} are not in the --concepts bank; pass "
                         "the bank that data_gen.balance matched against")
    return [bank_ids[c] for c in names]


def load(sample, tar, bank_ids: dict | None = None) -> dict:
    """encode_example's arguments for one sample, plus `unmapped` (concept names, no bank).
    Bad members (cut short, metadata that is not a caption object, an image that is not a
    readable JPEG) are errors naming the tar and member: shards hold only checked records."""
    path, key, members = sample

    def read(ext):
        try:
            return read_member(tar, members[ext], path)
        except TarCutShort as e:
            raise SystemExit(f"write: {e}") from None

    meta_where = f"{path} member {members['json' if 'json' in members else 'txt'].name}"
    meta = (parse_meta(read("json"), meta_where) if "json" in members
            else {"caption": caption_text(read("txt"), meta_where)})
    concepts = concept_ids_of(meta.get("input") or {}, bank_ids, f"{path}: sample {key!r}")
    image = read("jpg")
    check_jpeg(image, f"{path} member {members['jpg'].name}")
    return {"image": image, "captions": [meta["caption"]],
            "key": str(meta.get("key", key)), "concepts": concepts or [],
            "source": str(meta.get("source", "")), "web_caption": meta.get("web_caption", ""),
            "label": meta.get("label"), "unmapped": concepts is None}


def parse_meta(data: bytes, where: str) -> dict:
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise SystemExit(f"write: {where}: not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("caption"), str):
        raise SystemExit(f"write: {where}: expected a JSON object with a string 'caption', got "
                         f"{str(meta)[:80]}")
    if not isinstance(meta.get("web_caption", ""), str):
        raise SystemExit(f"write: {where}: 'web_caption' must be a string (CLIPS's web caption)")
    label = meta.get("label")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool) or label < 0):
        raise SystemExit(f"write: {where}: 'label' must be a class index >= 0, got {label!r}")
    if not isinstance(meta.get("input") or {}, dict):
        raise SystemExit(f"write: {where}: 'input' must be an object (the caption's row)")
    return meta


def caption_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise SystemExit(f"write: {where}: caption is not UTF-8 ({e})") from None


def check_jpeg(data: bytes, where: str) -> None:
    """Decodes the JPEG at 1/8 scale (draft mode: cheap) so that a truncated or non-JPEG image
    fails here, naming its member, and not in the trainer or the contact sheet."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            if kind == "JPEG":
                im.draft("RGB", (1, 1))
                im.load()
    except Exception as e:  # Pillow raises many types for broken files; all mean "bad image"
        raise SystemExit(f"write: {where}: not a readable JPEG ({type(e).__name__}: {e})") \
            from None
    if kind != "JPEG":
        raise SystemExit(f"write: {where}: a {kind} image, not JPEG; write stores JPEG bytes as "
                         "they are: use data_gen.import_pairs, which re-encodes, for other "
                         "formats")


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    lines = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return lines


def contact_sheet(samples: list[dict], path: Path, tile: int = 192) -> None:
    """A grid of images with their wrapped captions under each."""
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    cols = max(1, math.ceil(math.sqrt(len(samples))))
    rows, text_h, pad = math.ceil(len(samples) / cols), 4 * 15 + 4, 6
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + text_h + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for n, s in enumerate(samples):
        x = pad + (n % cols) * (tile + pad)
        y = pad + (n // cols) * (tile + text_h + pad)
        image = decode_rgb(s["image"])  # as training will see it
        sheet.paste(image.resize((tile, tile), Image.Resampling.BICUBIC), (x, y))
        for k, line in enumerate(_wrap(draw, s["captions"][0], font, tile, 4)):
            draw.text((x, y + tile + 2 + 15 * k), line, fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def concept_bank(path, bank) -> dict | None:
    """The bank that the `concept` ids index (line numbers, from 0), for the manifest."""
    if bank is None:
        return None
    return {"path": str(path), "entries": len(bank), "sha256": file_sha256(path)}


def finish(args, out: Path, paths, total: int, inputs, bank) -> None:
    """Contact sheet, the combined index (readers start with one request), then manifest.json
    (last: its presence means the output is complete)."""
    k = min(args.contact_sheet, total)
    picks = sorted(random.Random(args.seed).sample(range(total), k))
    if k:
        wanted = set(picks)
        samples = [load(sample, tar) for j, (sample, tar) in enumerate(iter_samples(paths))
                   if j in wanted]
        contact_sheet(samples, out / "contact_sheet.png")
    shards = []
    for s in range(args.num_shards):
        name = shard_name(args.prefix, s, args.num_shards)
        shards.append({"file": name, "records": len(range(s, total, args.num_shards)),
                       "sha256": file_sha256(out / name),
                       "index_sha256": file_sha256(out / f"{name}.index")})
    settings, sources = [], Counter()
    for folder in sorted({os.path.dirname(p) for p in paths}):
        n = sum(i["records"] for i in inputs if os.path.dirname(i["path"]) == folder)
        f = Path(folder) / "images_settings.json"
        st = json.loads(f.read_text()) if f.exists() else None
        settings.append({"folder": folder, "records": n, "settings": st})
        sources[(st or {}).get("source", "")] += n
    stages = {Path(f).stem: json.loads(Path(f).read_text()) for f in args.manifest_extra}
    write_combined_index(out)
    manifest = {"prefix": args.prefix, "num_shards": args.num_shards,
                "num_records": total, "shards": shards, "inputs": inputs,
                "settings": settings, "sources": dict(sorted(sources.items())),
                "stages": stages, "concept_bank": concept_bank(args.concepts, bank),
                "fingerprint": fingerprint.stored(out / ".fingerprint-write.json"),
                "contact_sheet": {"file": "contact_sheet.png" if k else None,
                                                    "records": picks, "seed": args.seed}}
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def shard_fingerprint(args, paths) -> dict:
    """What the shards are made of: the pairs files (size + mtime), the bank and the layout.
    (--contact-sheet, --seed and --manifest-extra change only the sheet and the manifest.)"""
    return {"pairs": fingerprint.files_stamp(paths), "num_shards": args.num_shards,
            "prefix": args.prefix,
            "concepts": fingerprint.file_stamp(args.concepts) if args.concepts else None}


def claim_output(args, out: Path, paths) -> None:
    """Refuses an OUT whose shards come from other pairs or settings; --overwrite clears it."""
    record = out / ".fingerprint-write.json"
    if (out / "manifest.json").exists() and fingerprint.stored(record) is None:
        fingerprint.write(record, {"pairs": "not recorded (written by an older data_gen.write)"})
    if args.overwrite and args.num_workers > 1:
        raise SystemExit("write: --overwrite with several workers would delete the others' "
                         f"fresh shards; remove {out} once instead, then start the workers")

    def clear():
        for pattern in ("*.tfrecord", "*.tfrecord.index", "manifest.json", "contact_sheet.png"):
            for f in out.glob(pattern):
                f.unlink()
        print(f"write: --overwrite: removed the shards and manifest in {out}", flush=True)

    fingerprint.claim(record, shard_fingerprint(args, paths), stage="write",
                      overwrite=args.overwrite, clear=clear,
                      fix="rerun with --overwrite to redo it, or use another --out")


def check_extra_files(args) -> None:
    """Files read only by finish(): checked first, so that a typo cannot stop the run after the
    shards and before the manifest."""
    for f in args.manifest_extra:
        try:
            json.loads(Path(f).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"write: --manifest-extra {f}: not a readable JSON file ({e})")


def run(args) -> int:
    check_worker_args(args.worker_index, args.num_workers)
    if args.num_shards < 1:
        raise SystemExit(f"--num-shards {args.num_shards} must be at least 1")
    paths = sorted({p for pattern in args.pairs for p in glob.glob(pattern)})
    if not paths:
        raise SystemExit(f"no pairs files match {args.pairs}")
    out = Path(args.out)
    inputs = [{"path": p, "bytes": os.path.getsize(p)} for p in paths]
    manifest_path = out / "manifest.json"
    check_extra_files(args)
    claim_output(args, out, paths)
    if manifest_path.exists():
        print(f"write: {manifest_path} already complete for these inputs; nothing to do")
        return 0
    names = [shard_name(args.prefix, s, args.num_shards) for s in range(args.num_shards)]
    todo = [s for s in range(args.num_shards) if s % args.num_workers == args.worker_index
            and not (out / names[s]).exists()]
    print(f"write: {len(paths)} pairs files -> {args.num_shards} shards; worker "
          f"{args.worker_index}/{args.num_workers} writes {len(todo)}", flush=True)
    bank = load_bank(args.concepts, dedup=False) if args.concepts else None
    bank_ids = None
    if bank is not None:  # first line of a name wins, as balance's bank with repeats
        bank_ids = {}
        for i, name in enumerate(bank):
            bank_ids.setdefault(name, i)
    writers = {s: ShardWriter(str(out / names[s])) for s in todo}
    counts, total, unmapped = Counter(), 0, 0
    try:  # every worker walks all samples (headers only) to number them; reads only its own
        for sample, tar in progress(iter_samples(paths), None, "write", quiet=args.quiet):
            if total % args.num_shards in writers:
                example = load(sample, tar, bank_ids)
                unmapped += example.pop("unmapped")
                writers[total % args.num_shards].write(encode_example(**example))
            counts[sample[0]] += 1
            total += 1
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    if unmapped:
        print(f"write: {unmapped} records carry concept names but no --concepts bank was given: "
              "they are stored without concept ids", flush=True)
    if all((out / n).exists() for n in names):
        finish(args, out, paths, total, [{**i, "records": counts[i["path"]]} for i in inputs],
               bank)
        print(f"write: done; see {manifest_path}")
    else:
        print("write: other workers' shards are still missing; the last one writes the manifest")
    return 0


def parse_args(argv=None):
    p = stage_parser("write", __doc__)
    p.add_argument("--pairs", nargs="+", required=True, help="glob(s) of pairs .tar files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-shards", type=int, required=True, help="number of output shards")
    p.add_argument("--prefix", default="synth", help="shard name prefix (default synth)")
    p.add_argument("--manifest-extra", nargs="*", default=[], metavar="JSON",
                   help="earlier stages' stats files, copied into manifest['stages']")
    p.add_argument("--concepts", metavar="BANK",
                   help="the concept bank data_gen.balance used: rows' concept names are stored "
                        "as their line numbers in it (without it, names are not stored)")
    p.add_argument("--contact-sheet", type=int, default=16, metavar="K",
                   help="pairs shown in contact_sheet.png (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact-sheet sample")
    p.add_argument("--overwrite", action="store_true",
                   help="redo an OUT whose shards were written from other pairs files or "
                        "settings (without it, such an OUT is refused); one worker only")
    p.add_argument("--quiet", action="store_true",
                   help="no live progress line: a line every 5 s (as when not on a terminal)")
    add_worker_args(p, old_aliases=False)  # here --num-shards counts output shards
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli_paths.input_file("write", "--concepts", args.concepts)
    cli_paths.output_dir("write", "--out", args.out)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
