"""Import existing image-caption pairs into TFRecord shards + index + manifest.json.

Input layouts (told apart by the --input path):
  *.csv   header `image_path,caption` (released SynthCI-30M); key = the image path
  *.tsv   header `id<TAB>image<TAB>caption1...`, one or more captions per row (SimCLIP/COCO);
          trailing empty caption cells are padding and dropped; key = the id
  DIR     NAME.jpg|.jpeg|.png|.webp + NAME.txt (one caption per non-empty line), searched
          recursively in sorted order; key = NAME (relative path, no extension)
  *.tar   webdataset shards: a file, a glob, or a comma-separated list; members grouped by
          key (path up to the first dot of the basename) with an image member + a .txt member
CSV/TSV image paths are relative to --image-root (default: the input file's folder).

Every image is decoded, converted to RGB (transparency over white), downscaled with LANCZOS so
that its longer side is at most --max-side (never upscaled), and re-encoded as JPEG at
--jpeg-quality. Records go to the shards round-robin in input order (record j -> shard j % N),
so the same input and settings give byte-identical shards. The manifest is written last; an
--out that already holds a complete manifest for the same input and settings is left as is.
The manifest's fingerprint (input files' size and mtime, and the settings) is compared on a
rerun: other input or settings are refused, or redone with --overwrite.

Checked: CSV is read strictly (a quote left open is an error naming the line; a field over
several lines is a bad item); every .tar must end with its end-of-archive marker (a cut-short
archive is an error naming it). Manifest counts: read = written + skipped (skipped_by_reason).
"""
import argparse
import collections
import contextlib
import csv
import functools
import glob
import hashlib
import io
import json
import multiprocessing
import os
import posixpath
import sys
import tarfile
import time
from typing import Iterator, NamedTuple

from PIL import Image, ImageOps

from data_gen import fingerprint
from data_gen.common import file_sha256
from data_gen.tars import TarCutShort, check_ended, read_member
from synthclip_jax.data.jpeg import encode_jpeg
from synthclip_jax.data.shard_index import write_combined_index
from synthclip_jax.data.tfrecord import ShardWriter, encode_example, shard_name
from synthclip_jax.files import atomic_path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # priority order inside a webdataset sample
PROGRESS_EVERY = 1000


class Fatal(Exception):
    """An error that stops the import (bad input without --skip-bad, or a broken input file)."""


class Item(NamedTuple):
    where: str  # file + line/member, for messages
    key: str
    image: "str | bytes | None"  # a path, the bytes (tar), or None for a malformed item
    captions: list
    bad: str = ""  # reason, for items already known to be malformed


def _root(path, image_root):
    return image_root or os.path.dirname(os.path.abspath(path))


def read_csv(path, image_root) -> Iterator[Item]:
    root = _root(path, image_root)
    # surrogateescape keeps reading past invalid UTF-8; the caption check reports that row.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        rows = csv.reader(f, strict=True)  # strict: a stray quote is an error, not a merge
        header = _csv_row(rows, path)
        if [h.strip() for h in header or []] != ["image_path", "caption"]:
            raise Fatal(f"{path} line 1: expected the header 'image_path,caption', got {header}")
        while True:
            first = rows.line_num + 1
            row = _csv_row(rows, path)
            if row is None:
                return
            lines = (f"line {rows.line_num}" if rows.line_num == first
                     else f"lines {first}-{rows.line_num}")
            where = f"{path} {lines}"
            if not row:
                continue
            if any("\n" in c or "\r" in c for c in row):
                # a quoted field over several lines: almost always a quote left open that
                # swallowed the rows after it into this one caption
                yield Item(where, row[0], None, [], "row spans several lines (a quote left "
                           "open?): its caption would hold line breaks and the rows after it")
            elif len(row) != 2:
                yield Item(where, "", None, [], f"malformed row: {len(row)} columns, expected 2")
            else:
                yield Item(where, row[0], os.path.join(root, row[0]), [row[1]])


def _csv_row(rows, path):
    """The next row, or None at the end; a CSV syntax error stops the import, naming the line
    (after it the reader cannot tell where rows start)."""
    first = rows.line_num + 1
    try:
        return next(rows, None)
    except csv.Error as e:
        lines = f"line {first}" + (f" (read to line {rows.line_num})"
                                   if rows.line_num > first else "")
        raise Fatal(f"{path} {lines}: malformed CSV ({e}): a quote left open, or text after a "
                    "closing quote? Quote the whole caption and double the quotes inside it")


def read_tsv(path, image_root) -> Iterator[Item]:
    root = _root(path, image_root)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            cols = raw.decode("utf-8", "surrogateescape").rstrip("\r\n").split("\t")
            if n == 1:
                if len(cols) < 3 or [c.strip().lower() for c in cols[:2]] != ["id", "image"]:
                    raise Fatal(f"{path} line 1: expected a header 'id<TAB>image<TAB>caption1"
                                f"...', got {cols}")
                width = len(cols)
                continue
            if not "".join(cols).strip():
                continue
            where = f"{path} line {n}"
            if not 3 <= len(cols) <= width:
                yield Item(where, "", None, [], f"malformed row: {len(cols)} columns, expected "
                           f"3..{width} as in the header")
                continue
            captions = cols[2:]
            while len(captions) > 1 and not captions[-1].strip():
                captions.pop()
            yield Item(where, cols[0], os.path.join(root, cols[1]), captions)


def _caption_lines(data: bytes) -> list:
    return [s for s in data.decode("utf-8", "surrogateescape").splitlines() if s.strip()]


def read_folder(path, _image_root=None) -> Iterator[Item]:
    groups = collections.defaultdict(lambda: ([], []))  # key -> (image files, txt files)
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for name in files:
            stem, ext = os.path.splitext(os.path.relpath(os.path.join(d, name), path))
            ext = ext[1:].lower()
            if not name.startswith(".") and (ext in IMAGE_EXTS or ext == "txt"):
                groups[stem.replace(os.sep, "/")][ext == "txt"].append(stem + "." + ext)
    for key in sorted(groups):
        images, txts = (sorted(g) for g in groups[key])
        where = os.path.join(path, (images or txts)[0])
        if len(images) != 1:
            why = "caption file without an image" if not images else f"several images: {images}"
            yield Item(where, key, None, [], why)
        elif not txts:
            yield Item(where, key, None, [], f"missing caption file: {key}.txt")
        else:
            with open(os.path.join(path, txts[0]), "rb") as f:
                yield Item(where, key, os.path.join(path, images[0]), _caption_lines(f.read()))


def _tar_sample(tar_path, key, members) -> Item:
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    where = f"{tar_path} member {members[ext][0] if ext else next(iter(members.values()))[0]}"
    if ext is None:
        return Item(where, key, None, [], "no image member (jpg/jpeg/png/webp)")
    if "txt" not in members:
        return Item(where, key, None, [], f"missing caption member: {key}.txt")
    return Item(where, key, members[ext][1], _caption_lines(members["txt"][1]))


def read_tars(spec, _image_root=None) -> Iterator[Item]:
    paths = [p for part in spec.split(",") for p in sorted(glob.glob(part))]
    if not paths:
        raise Fatal(f"no .tar files match {spec}")
    for tar_path in paths:
        try:
            with tarfile.open(tar_path) as tar:
                key, members = None, {}
                for m in tar:
                    d, base = posixpath.split(m.name)
                    if not m.isfile() or base.startswith("."):
                        continue
                    stem, _, ext = base.partition(".")  # webdataset: key ends at the first dot
                    if posixpath.join(d, stem) != key and members:
                        yield _tar_sample(tar_path, key, members)
                        members = {}
                    key = posixpath.join(d, stem)
                    members[ext.lower()] = (m.name, read_member(tar, m, tar_path))
                # before the last sample: an archive cut at a member boundary would otherwise
                # yield a last sample that lacks its later members
                check_ended(tar, tar_path)
                if members:
                    yield _tar_sample(tar_path, key, members)
        except TarCutShort as e:
            raise Fatal(str(e)) from None
        except (tarfile.TarError, OSError) as e:
            raise Fatal(f"{tar_path}: cannot read tar file ({e}); cut short or damaged?") from None


READERS = {"csv": read_csv, "tsv": read_tsv, "folder": read_folder, "tar": read_tars}


def detect_kind(spec: str) -> str:
    if os.path.isdir(spec):
        return "folder"
    for kind in ("csv", "tsv"):
        if spec.lower().endswith("." + kind):
            if not os.path.isfile(spec):
                raise Fatal(f"input file {spec} not found")
            return kind
    if all(p.lower().endswith(".tar") for p in spec.split(",")):
        return "tar"
    raise Fatal(f"cannot tell the layout of {spec}: expected a .csv, a .tsv, a folder, or "
                ".tar shards (a file, glob or comma-separated list)")


def to_jpeg(data: bytes, max_side: int, quality: int) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)  # photos are often stored rotated + an EXIF flag
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
        im = im.convert("RGB")
        w, h = im.size
        if max(w, h) > max_side:
            s = max_side / max(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        return encode_jpeg(im, quality)


def process(item: Item, *, source, max_side, quality):
    """Returns (where, key, serialized Example or None, reason); may run in a worker."""
    if item.bad:
        return item.where, item.key, None, item.bad
    captions = [c.strip() for c in item.captions]
    if not captions or not all(captions):
        return item.where, item.key, None, "empty caption"
    for c in captions:
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            return item.where, item.key, None, f"caption is not valid UTF-8: {c[:60]!r}"
    data = item.image
    if isinstance(data, str):
        try:
            with open(data, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return item.where, item.key, None, f"missing image file: {data}"
        except OSError as e:
            return item.where, item.key, None, f"cannot read image file: {e}"
    try:
        jpeg = to_jpeg(data, max_side, quality)
    except Exception as e:  # Pillow raises many types for broken files; all mean "bad image"
        return item.where, item.key, None, f"cannot decode image: {type(e).__name__}: {e}"
    example = encode_example(image=jpeg, captions=captions, key=item.key, source=source)
    return item.where, item.key, example, ""


def input_files_stamp(kind: str, spec: str):
    """Size + mtime of the input files (not of the images a CSV/TSV names: 30M stats per run
    would cost more than they catch); of a folder's files, as a count and a digest."""
    if kind == "tar":
        return fingerprint.files_stamp(
            p for part in spec.split(",") for p in sorted(glob.glob(part)))
    if kind != "folder":
        return fingerprint.files_stamp([spec])
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(spec) for f in fs)
    stamps = [{**fingerprint.file_stamp(p), "path": os.path.relpath(p, spec)} for p in paths]
    digest = hashlib.sha256(json.dumps(stamps, sort_keys=True).encode()).hexdigest()
    return {"count": len(paths), "names_sizes_mtimes_sha256": digest}


def already_done(args, manifest_path: str, fp: dict, names: list) -> bool:
    """True if --out holds a complete import of the same input files and settings. A manifest
    of anything else refuses, or with --overwrite is removed with its shards, to be redone."""
    if not os.path.exists(manifest_path):
        return False  # no finished import: its shards, if any, are about to be rewritten
    try:
        with open(manifest_path) as f:
            old = json.load(f)
    except ValueError as e:
        raise Fatal(f"{manifest_path} is not valid JSON ({e}); delete it to re-import")
    old_fp = old.get("fingerprint", {"made before fingerprints were recorded": True})
    complete = all(os.path.exists(os.path.join(args.out, n)) for n in names)
    if old_fp == fp and complete:
        return True
    if old_fp != fp and not args.overwrite:
        raise Fatal(f"{args.out} holds an import of other input or settings "
                    f"({fingerprint.describe(old_fp, fp)}); rerun with --overwrite to redo it, "
                    "or use another --out")
    for shard in old.get("shards", []):  # --overwrite, or shards missing: redo from scratch
        for f in (shard["file"], shard["file"] + ".index"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(args.out, f))
    os.remove(manifest_path)
    return False


def run(args) -> None:
    kind = detect_kind(args.input)
    spec = ",".join(os.path.abspath(p) for p in args.input.split(","))
    settings = {k: getattr(args, k) for k in ("num_shards", "prefix", "max_side", "jpeg_quality",
                                              "skip_bad", "max_bad_fraction")}
    settings.update(image_root=args.image_root and os.path.abspath(args.image_root),
                    resample="LANCZOS", sharding="round-robin")
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    names = [shard_name(args.prefix, i, args.num_shards) for i in range(args.num_shards)]
    fp = {"input": spec, "settings": settings, "files": input_files_stamp(kind, args.input)}
    if already_done(args, manifest_path, fp, names):
        print(f"import_pairs: {args.out} is already complete for {spec} (same input files and "
              "settings); nothing to do")
        return
    stray = {os.path.basename(p) for p in glob.glob(os.path.join(args.out, "*.tfrecord"))}
    if stray - set(names):
        raise Fatal(f"{args.out} holds other shards ({sorted(stray - set(names))[:3]}...) that "
                    "a *.tfrecord glob would mix in; use an empty --out")

    items = READERS[kind](args.input, args.image_root)
    fn = functools.partial(process, source=f"import_pairs:{kind}", max_side=args.max_side,
                           quality=args.jpeg_quality)
    read, written, skipped, start = 0, 0, [], time.time()
    with contextlib.ExitStack() as stack:  # an exception aborts every writer: no final files
        writers = [stack.enter_context(ShardWriter(os.path.join(args.out, n))) for n in names]
        if args.workers > 1:  # spawn: forking a process that may hold JAX threads is unsafe
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(args.workers))
            results = pool.imap(fn, items, chunksize=16)
        else:
            results = map(fn, items)
        for where, key, payload, reason in results:
            read += 1
            if reason:
                if not args.skip_bad:
                    raise Fatal(f"{where}: {reason} (use --skip-bad to skip such items)")
                skipped.append({"where": where, "key": key, "reason": reason})
            else:
                writers[written % args.num_shards].write(payload)
                written += 1
            if read % PROGRESS_EVERY == 0:
                print(f"import_pairs: {read} read, {written} written, {len(skipped)} skipped "
                      f"({read / (time.time() - start):.0f} items/s)", file=sys.stderr)
        if read == 0:
            raise Fatal(f"{args.input}: no image-caption pairs found")
        if len(skipped) > args.max_bad_fraction * read:
            raise Fatal(f"{args.input}: {len(skipped)} of {read} items are bad, more than "
                        f"--max-bad-fraction={args.max_bad_fraction}; first: "
                        f"{skipped[0]['where']}: {skipped[0]['reason']}")
        counts = [w.num_records for w in writers]
    why = collections.Counter(s["reason"].split(":")[0] for s in skipped)  # read = written + these
    shards = [{"file": n, "records": c, "sha256": file_sha256(os.path.join(args.out, n))}
              for n, c in zip(names, counts)]
    manifest = {"input": spec, "kind": kind, "settings": settings, "fingerprint": fp,
                "counts": {"read": read, "written": written, "skipped": len(skipped)},
                "shards": shards, "skipped_by_reason": dict(sorted(why.items())),
                "skipped": skipped}
    write_combined_index(args.out)  # one request at a reader's start (before the manifest)
    with atomic_path(manifest_path) as tmp, open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    if skipped:
        print(f"import_pairs: skipped {len(skipped)} of {read} items ("
              + ", ".join(f"{r}: {n}" for r, n in sorted(why.items())) + f"); see {manifest_path}")
    print(f"import_pairs: wrote {written} records to {args.num_shards} shards in {args.out}")


def _number(cast, lo, hi=float("inf")):
    def parse(s):
        v = cast(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{s} is not in [{lo}, {hi}]")
        return v
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m data_gen.import_pairs", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m data_gen.import_pairs --input synthci30m.csv "
        "--image-root images/ --out data/synthci30m --num-shards 1024 --workers 16")
    arg = p.add_argument
    arg("--input", required=True, help="CSV, TSV, image folder, or .tar shards")
    arg("--out", required=True, help="output folder for shards + manifest.json")
    arg("--num-shards", type=_number(int, 1), required=True,
        help="records are dealt to the shards round-robin")
    arg("--image-root", help="base of relative CSV/TSV image paths (default: the input's folder)")
    arg("--prefix", default="pairs",
        help="shard names: PREFIX-00000-of-0000N.tfrecord (default: %(default)s)")
    arg("--max-side", type=_number(int, 1), default=256,
        help="downscale so the longer side is at most this (default: %(default)s)")
    arg("--jpeg-quality", type=_number(int, 1, 100), default=95,
        help="JPEG quality of the re-encoded images (default: %(default)s)")
    arg("--skip-bad", action="store_true",
        help="skip bad items (counted with the reason in manifest.json) instead of failing")
    arg("--max-bad-fraction", type=_number(float, 0.0, 1.0), default=0.01,
        help="with --skip-bad, still fail if more than this fraction is bad "
        "(default: %(default)s)")
    arg("--overwrite", action="store_true",
        help="redo an --out that holds a finished import of other input files or settings "
        "(without it, such an --out is refused)")
    arg("--workers", type=_number(int, 1), default=1,
        help="image-decoding processes (default: %(default)s; the output does not depend on it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Fatal as e:
        print(f"import_pairs: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
