"""Import existing image-caption pairs into TFRecord shards + index + manifest.json.

Input layouts (data_gen.pair_inputs): a CSV/TSV with header `image_path,caption[,web_caption]`
(or tab-separated: the released SynthCI-30M, images in the --image-root's *.zip archives, read in
place), a TSV `id<TAB>image<TAB>caption1...` (SimCLIP/COCO), a folder of NAME.jpg + NAME.txt,
or webdataset .tar shards. Table image paths are relative to --image-root (default: the input
file's folder): a file under it, or a member of one of its *.zip archives; a path that leaves
it (absolute, '..') is a bad item unless --allow-outside-root.

Images: a JPEG already RGB, upright (no EXIF rotation) and at most --max-side, with its
start-of-image and end-of-image markers (a truncated file lacks the latter), is stored as it is;
any other image is decoded (a large JPEG at a reduced scale, by DCT scaling, never below the
target size), converted to RGB by the rule every stage decodes with
(synthclip_jax/data/image_decode.py: EXIF orientation, 16-bit grey scaled, transparency over
white), downscaled with LANCZOS to at most
--max-side (never upscaled) and re-encoded as JPEG at --jpeg-quality.

Sharding: input item j (counting every row read, good or bad) goes to shard j % --num-shards,
so the same input and settings give byte-identical shards. --worker-index I --num-workers N
splits the work with no coordinator: worker I writes the shards s with s % N == I (every worker
streams the whole input, and reads the images of its own items only); the union of the
workers' shards equals a one-worker import byte for byte. Each worker records its shards
(records, sha256) and skipped items in import-part-IIIII-of-NNNNN.json; whichever worker finds
all parts writes manifest.json, last. A worker killed mid-way leaves no final-named shard of
that run's (they are written under temporary names) and reruns from the start of its shards.
--out may be a gs:// URL (data_gen.import_output: each object written once, complete, under
its final name; the manifest last). --workers decodes images in that many local processes.

An --out with a complete manifest for the same input and settings is left as is; the
manifest's fingerprint (input files' size and mtime, and the settings) is compared on a rerun:
other input or settings are refused, or redone with --overwrite (one worker only).
Checked: CSV is read strictly (a quote left open is an error naming the line; a field over
several lines is a bad item); every .tar must end with its end-of-archive marker. Manifest
counts: read = written + skipped (skipped_by_reason).
"""
import argparse
import collections
import functools
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import resource
import sys

from data_gen import fingerprint
from data_gen.common import check_worker_args, file_sha256, worker_suffix
from data_gen.import_output import Output
from data_gen.pair_inputs import (Fatal, OutsideRoot, Position, Resolver, detect_kind,
                                  read_items)
from data_gen.pair_records import process
from data_gen.progress import Progress
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.shard_index import write_combined_index
from synthclip_jax.config import cli_paths

PROGRESS_SECONDS = 10.0  # between progress lines when not on a terminal


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


def already_done(args, out: Output, fp: dict, names: list) -> bool:
    """True if --out holds a complete import of the same input files and settings. A manifest
    of anything else refuses, or with --overwrite is removed with its shards, to be redone."""
    try:
        old = out.read_json("manifest.json")
    except ValueError as e:
        raise Fatal(f"{out.url}/manifest.json is not valid JSON ({e}); delete it to re-import")
    if old is None:
        return False  # no finished import: its shards, if any, are about to be rewritten
    old_fp = old.get("fingerprint", {"made before fingerprints were recorded": True})
    complete = all(out.exists(n) for n in names)
    if old_fp == fp and complete:
        return True
    if old_fp != fp and not args.overwrite:
        raise Fatal(f"{out.url} holds an import of other input or settings "
                    f"({fingerprint.describe(old_fp, fp)}); rerun with --overwrite to redo it, "
                    "or use another --out")
    if args.num_workers > 1:
        raise Fatal(f"{out.url}: --overwrite with several workers would delete the others' "
                    "fresh shards; remove the old import once, then start the workers")
    for shard in old.get("shards", []):  # --overwrite, or shards missing: redo from scratch
        for f in (shard["file"], shard["file"] + ".index"):
            out.remove(f)
    out.remove("manifest.json")
    return False


def raise_open_files_limit(needed: int) -> None:
    """A worker keeps its shards open together (records go round-robin): lift the soft limit
    on open files to what it needs, up to the hard limit, or say what to do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise Fatal(f"this worker writes {needed - 64} shards at once, more than the open-files "
                    f"limit ({hard}) allows: use more --num-workers or fewer --num-shards")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def import_shards(args, kind, out: Output, names: list) -> dict:
    """Streams the input, writes this worker's shards; returns its part of the manifest."""
    mine = [s for s in range(args.num_shards) if s % args.num_workers == args.worker_index]
    raise_open_files_limit(len(mine) + 64)
    position, resolve = Position(), Resolver(args.quiet, args.allow_outside_root)

    def resolved(item):
        try:
            return item._replace(image=resolve(item.image))
        except OutsideRoot as outside:  # a bad item: refused, or skipped with --skip-bad
            return item._replace(image=None, bad=str(outside))

    def owned():  # item j belongs to shard j % num_shards; only this worker's are read
        for j, item in enumerate(read_items(kind, args.input, args.image_root, args.sep,
                                            position)):
            if (j % args.num_shards) % args.num_workers == args.worker_index:
                yield j, resolved(item) if not item.bad else item

    fn = functools.partial(process_job, source=f"import_pairs:{kind}", max_side=args.max_side,
                           quality=args.jpeg_quality)
    bar = Progress("import_pairs", None, "pairs", args.quiet, PROGRESS_SECONDS)
    writers = {s: ShardWriter(out.local(names[s])) for s in mine}
    try:
        if args.workers > 1:  # spawn: forking a process that may hold JAX threads is unsafe
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                counts = consume(args, bounded_imap(pool, fn, owned(), args.workers), writers,
                                 bar, position)
        else:
            counts = consume(args, map(fn, owned()), writers, bar, position)
        read, written, skipped = counts
        bar.close()
        if read == 0 and args.num_workers == 1:
            raise Fatal(f"{args.input}: no image-caption pairs found")
        if len(skipped) > args.max_bad_fraction * read:
            raise Fatal(f"{args.input}: {len(skipped)} of {read} items are bad, more than "
                        f"--max-bad-fraction={args.max_bad_fraction}; first: "
                        f"{skipped[0]['where']}: {skipped[0]['reason']}")
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    shards = []
    for s in mine:
        shards.append({"file": names[s], "records": writers[s].num_records,
                       "sha256": file_sha256(out.local(names[s]))})
        out.publish(names[s])
    return {"counts": {"read": read, "written": written, "skipped": len(skipped)},
            "shards": shards, "skipped": skipped}


def bounded_imap(pool, fn, jobs, workers: int, chunk: int = 16):
    """pool.imap(fn, jobs) in input order, with at most 4 chunks per worker in flight. (imap
    itself queues the whole input as fast as it can read it: 30M rows would sit in memory.)"""
    pending = collections.deque()
    for batch in iter(lambda: list(itertools.islice(jobs, chunk)), []):
        pending.append(pool.apply_async(process_chunk, (fn, batch)))
        if len(pending) >= 4 * workers:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def process_chunk(fn, jobs):
    return [fn(job) for job in jobs]


def process_job(job, **settings):
    j, item = job
    return (j, *process(item, **settings))


def consume(args, results, writers, bar, position):
    """Writes the results in input order; returns (read, written, skipped items)."""
    read, written, skipped = 0, 0, []
    for j, where, key, payload, reason in results:
        read += 1
        if reason:
            if not args.skip_bad:
                raise Fatal(f"{where}: {reason} (use --skip-bad to skip such items)")
            skipped.append({"item": j, "where": where, "key": key, "reason": reason})
        else:
            writers[j % args.num_shards].write(payload)
            written += 1
        bar.update(fraction=position.fraction,
                   note=f"({written} written, {len(skipped)} skipped)")
    return read, written, skipped


def part_name(worker_index: int, num_workers: int) -> str:
    return f"import-part-{worker_suffix(worker_index, num_workers)}.json"


def run(args) -> None:
    check_worker_args(args.worker_index, args.num_workers)
    kind = detect_kind(args.input)
    spec = ",".join(os.path.abspath(p) for p in args.input.split(","))
    settings = {k: getattr(args, k) for k in ("num_shards", "prefix", "max_side", "jpeg_quality",
                                              "skip_bad", "max_bad_fraction", "sep")}
    settings.update(image_root=args.image_root and os.path.abspath(args.image_root),
                    resample="LANCZOS after a JPEG draft decode at >= the target size",
                    sharding="round-robin by input item",
                    pass_through="upright RGB JPEG within max_side, with its EOI marker")
    out = Output(args.out)
    try:
        names = [shard_name(args.prefix, i, args.num_shards) for i in range(args.num_shards)]
        fp = {"input": spec, "settings": settings, "files": input_files_stamp(kind, args.input)}
        if already_done(args, out, fp, names):
            print(f"import_pairs: {args.out} is already complete for {spec} (same input files "
                  "and settings); nothing to do")
            return
        stray = set(out.names("*.tfrecord")) - set(names)
        if stray:
            raise Fatal(f"{args.out} holds other shards ({sorted(stray)[:3]}...) that a "
                        "*.tfrecord glob would mix in; use an empty --out")
        n, i = args.num_workers, args.worker_index
        part = out.read_json(part_name(i, n)) if n > 1 else None
        if part is not None and part.get("fingerprint") == fp:
            print(f"import_pairs: worker {i} of {n} already finished its shards")
        else:
            part = {**import_shards(args, kind, out, names), "fingerprint": fp}
            if n > 1:
                out.write_json(part_name(i, n), part)
        parts = [part] if n == 1 else [out.read_json(part_name(k, n)) for k in range(n)]
        if any(p is None or p.get("fingerprint") != fp for p in parts):
            print(f"import_pairs: worker {i} of {n} done; the last worker to finish writes "
                  "manifest.json")
            return
        write_manifest(args, out, spec, kind, settings, fp, parts)
    finally:
        out.close()


def write_manifest(args, out, spec, kind, settings, fp, parts) -> None:
    """The workers' parts merged (in shard and input order), written last."""
    counts = {k: sum(p["counts"][k] for p in parts) for k in ("read", "written", "skipped")}
    if counts["read"] == 0:
        raise Fatal(f"{args.input}: no image-caption pairs found")
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["file"])
    skipped = sorted((s for p in parts for s in p["skipped"]), key=lambda s: s["item"])
    why = collections.Counter(s["reason"].split(":")[0] for s in skipped)  # read = written + these
    manifest = {"input": spec, "kind": kind, "settings": settings, "fingerprint": fp,
                "counts": counts, "shards": shards, "skipped_by_reason": dict(sorted(why.items())),
                "skipped": skipped}
    if not out.remote:  # one request at a reader's start (before the manifest); remote: the
        write_combined_index(args.out)  # reader reads the shards' own indexes concurrently
    out.write_json("manifest.json", manifest)
    if skipped:
        print(f"import_pairs: skipped {len(skipped)} of {counts['read']} items ("
              + ", ".join(f"{r}: {n}" for r, n in sorted(why.items()))
              + f"); see {out.url}/manifest.json")
    print(f"import_pairs: wrote {counts['written']} records to {args.num_shards} shards in "
          f"{args.out}")

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
        epilog="example (released SynthCI-30M, no unzip): python -m data_gen.import_pairs "
        "--input SynthCI-30/combined_images_and_captions.csv --image-root SynthCI-30/data "
        "--out data/synthci30m --num-shards 1024 --workers 16 [--worker-index I "
        "--num-workers N]")
    arg = p.add_argument
    arg("--input", required=True, help="CSV, TSV, image folder, or .tar shards")
    arg("--out", required=True,
        help="output folder for shards + manifest.json (local, or gs://bucket/dir)")
    arg("--num-shards", type=_number(int, 1), required=True,
        help="records are dealt to the shards round-robin")
    arg("--image-root", help="base of relative CSV/TSV image paths, as files under it or members "
        "of its *.zip archives (default: the input's folder)")
    arg("--allow-outside-root", action="store_true",
        help="let table image paths leave --image-root (absolute paths, '..'); refused by "
        "default, so that a table cannot read any file the importing user can")
    arg("--sep", help="CSV/TSV separator (default: tab if the header line has one, else comma)")
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
    arg("--worker-index", type=_number(int, 0), default=0, metavar="I",
        help="this worker writes the shards s with s %% N == I (default: %(default)s)")
    arg("--num-workers", type=_number(int, 1), default=1, metavar="N",
        help="independent workers (processes or machines) splitting the shards, no "
        "coordinator; the union equals a one-worker import (default: %(default)s)")
    arg("--quiet", action="store_true",
        help="no live progress line: a progress line every 10 s (as when not on a terminal)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli_paths.output_dir("import_pairs", "--out", args.out)
    try:
        run(args)
    except Fatal as e:
        print(f"import_pairs: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # check_worker_args
        if isinstance(e.code, str):
            print(f"import_pairs: error: {e.code}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
