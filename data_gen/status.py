"""Which workers of a data_gen stage are done, and which to run again.

  python -m data_gen.status --stage {captions,images,import_pairs,write} --out DIR --num-workers N

Reads only what the stages themselves leave in --out (their outputs, temporaries, parts and
fingerprints), so it works the same after a SLURM array or a Ray job, while the job runs or after
it died. Each worker is one of:
  complete  all its outputs exist (final names: written atomically, so whole)
  partial   some of its outputs, or a temporary file (a worker killed mid-way, or still running)
  missing   nothing of it yet
  stale     its outputs were made from inputs or settings other than the folder's now: an input
            file named in the fingerprint changed (size or mtime) or is gone, or (images,
            import_pairs) the output records other settings than the folder's fingerprint
Then one line of counts and, unless all are complete, the worker indices to re-run, as a list
and as a SLURM `--array=` value (tools/gpu/slurm_datagen.sbatch maps array index = worker
index). A stale folder cannot be resumed: the stage refuses to mix runs; use another --out or
delete it. Exit status 0 only when every worker is complete (and the stage's closing file, the
manifest of write and import_pairs, exists); 1 otherwise; 2 for a bad argument.

What a worker owns (as the stages split work): captions, worker I: captions-IIIII-of-NNNNN.jsonl
(its .stats.json is written just before). images: chunk c (pairs-CCCCC.tar) belongs to worker
c % N; the chunk count comes from images_settings.json (num_captions, chunk_size). write and
import_pairs: shard s belongs to worker s % N; import_pairs workers also write
import-part-IIIII-of-NNNNN.json when N > 1. Local folders only (not gs://). Stdlib only.
"""
import argparse
import glob
import json
import math
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from data_gen import fingerprint
from data_gen.common import worker_suffix

STAGES = ("captions", "images", "import_pairs", "write")
STATES = ("complete", "partial", "missing", "stale")


@dataclass
class Worker:
    index: int
    state: str = "missing"
    done: int = 0  # outputs present, of
    total: int = 0  # outputs owned
    detail: str = ""


@dataclass
class Report:
    workers: list
    notes: list = field(default_factory=list)  # folder-level problems, each one line
    closing_missing: bool = False  # all workers done but the stage's closing file is absent


def temporaries(out: Path, name: str) -> list:
    """Temporary files of `name` (synthclip_jax.run.files.temp_path: .NAME.tmp-PID)."""
    return glob.glob(str(out / f".{glob.escape(name)}.tmp-*"))


def changed_inputs(recorded) -> list[str]:
    """The files named in a fingerprint (stamps with an absolute path) that changed or are
    gone since: the check the stage's own rerun makes, without its arguments."""
    changed = []
    if isinstance(recorded, dict):
        if {"path", "bytes", "mtime_ns"} <= set(recorded) and os.path.isabs(recorded["path"]):
            try:
                if fingerprint.file_stamp(recorded["path"]) != recorded:
                    changed.append(f"{recorded['path']} changed")
            except FileNotFoundError:
                changed.append(f"{recorded['path']} is gone")
            return changed
        recorded = list(recorded.values())
    if isinstance(recorded, list):
        for item in recorded:
            changed += changed_inputs(item)
    return changed


def owned_files(workers: list, names: dict, out: Path, extra=lambda i: False) -> None:
    """Fills each worker's state from the files it owns: names[i] = its output file names
    (final names); `extra(i)`: another sign of a started worker (e.g. a stats file)."""
    for w in workers:
        own = names[w.index]
        present = [n for n in own if (out / n).exists()]
        started = any(temporaries(out, n) for n in own) or extra(w.index)
        w.done, w.total = len(present), len(own)
        missing = [n for n in own if n not in present]
        if not missing:
            w.state = "complete"
        elif present or started:
            w.state = "partial"
            w.detail = f"missing {missing[0]}" + (f" and {len(missing) - 1} more"
                                                   if len(missing) > 1 else "")


def mark_stale(workers: list, why: str) -> None:
    """Every worker with any output is stale (a rerun would be refused); the rest missing."""
    for w in workers:
        if w.done or w.state == "partial":
            w.state, w.detail = "stale", why


def captions(out: Path, n: int) -> Report:
    workers = [Worker(i) for i in range(n)]
    fp = fingerprint.stored(out / ".fingerprint-captions.json")
    report = Report(workers)
    if fp is not None and fp.get("num_workers", n) != n:
        raise SystemExit(f"status: {out} was started with --num-workers {fp['num_workers']} "
                         f"(recorded in {out}/.fingerprint-captions.json), not {n}")
    names = {i: [f"captions-{worker_suffix(i, n)}.jsonl"] for i in range(n)}
    owned_files(workers, names, out, lambda i: (
        out / f"captions-{worker_suffix(i, n)}.stats.json").exists())
    if fp is not None and (changed := changed_inputs(fp)):
        mark_stale(workers, "; ".join(changed))
    return report


def first_settings(tar_path: Path):
    """The `settings` in the first sample's .json of a pairs file (None if unreadable)."""
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    return json.loads(tar.extractfile(member).read()).get("settings")
    except (tarfile.TarError, OSError, ValueError):
        return None
    return None


def images(out: Path, n: int) -> Report:
    workers = [Worker(i) for i in range(n)]
    report = Report(workers)
    settings = fingerprint.stored(out / "images_settings.json")
    if settings is None:  # written before the first chunk: nothing generated yet
        if glob.glob(str(out / "pairs-*.tar")):
            report.notes.append(f"{out} holds pairs files but no images_settings.json: not "
                                "an images output folder, or a damaged one")
        return report
    chunks = math.ceil(settings["num_captions"] / settings["chunk_size"])
    names = {i: [f"pairs-{c:05d}.tar" for c in range(i, chunks, n)] for i in range(n)}
    owned_files(workers, names, out)
    for w in workers:  # a pairs file from other settings (images_settings.json replaced)
        for name in names[w.index]:
            got = first_settings(out / name) if (out / name).exists() else settings
            if got != settings:
                why = ("unreadable" if got is None else
                       "other settings: " + fingerprint.describe(got, settings))
                w.state, w.detail = "stale", f"{name}: {why}"
                break
    return report


def shard_names(out: Path, fp_settings) -> "tuple[str, int] | None":
    """(prefix, num_shards) from a recorded fingerprint, else from shard names on disk."""
    if fp_settings:
        return fp_settings["prefix"], fp_settings["num_shards"]
    pattern = re.compile(r"^\.?(.+)-\d{5}-of-(\d{5})\.tfrecord")
    for name in sorted(os.listdir(out)) if out.is_dir() else []:
        if m := pattern.match(name):
            return m.group(1), int(m.group(2))
    return None


def shard_worker_names(prefix: str, num_shards: int, n: int) -> dict:
    return {i: [f"{prefix}-{s:05d}-of-{num_shards:05d}.tfrecord{ext}"
                for s in range(i, num_shards, n) for ext in ("", ".index")] for i in range(n)}


def write(out: Path, n: int) -> Report:
    workers = [Worker(i) for i in range(n)]
    report = Report(workers)
    fp = fingerprint.stored(out / ".fingerprint-write.json")
    layout = shard_names(out, fp if fp and "prefix" in fp else None)
    if layout is None:
        return report
    owned_files(workers, shard_worker_names(*layout, n), out)
    if fp is not None and (changed := changed_inputs(fp)):
        mark_stale(workers, "; ".join(changed))
    report.closing_missing = not (out / "manifest.json").exists()
    return report


def import_pairs(out: Path, n: int) -> Report:
    workers = [Worker(i) for i in range(n)]
    report = Report(workers)
    manifest = fingerprint.stored(out / "manifest.json")
    parts = {i: fingerprint.stored(out / f"import-part-{worker_suffix(i, n)}.json")
             for i in range(n)} if n > 1 else {}
    fps = [p["fingerprint"] for p in parts.values() if p] + (
        [manifest["fingerprint"]] if manifest and "fingerprint" in manifest else [])
    layout = shard_names(out, fps[0]["settings"] if fps else None)
    if layout is None:
        return report
    owned_files(workers, shard_worker_names(*layout, n), out)
    if manifest is None:
        for w in workers:  # shards are renamed before the part that marks the worker done
            if w.state == "complete" and n > 1 and parts[w.index] is None:
                w.state, w.detail = "partial", "shards written, its import-part file is not"
        report.closing_missing = True
    folder_fp = manifest["fingerprint"] if manifest and "fingerprint" in manifest else None
    for w in workers:
        part = parts.get(w.index)
        own_fp = part["fingerprint"] if part else (folder_fp if w.done else None)
        if own_fp is None:
            continue
        why = changed_inputs(own_fp.get("files"))
        if folder_fp is not None and own_fp != folder_fp:
            why.append("its import-part records other input or settings than manifest.json: "
                       + fingerprint.describe(own_fp, folder_fp))
        if why:
            w.state, w.detail = "stale", "; ".join(why)
    return report


def array_spec(indices: list[int]) -> str:
    """SLURM's compact form: 0-3,7,9-10."""
    runs, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            runs.append(f"{start}-{i}" if i > start else f"{start}")
            start = None
    return ",".join(runs)


def show(stage: str, out: Path, report: Report) -> int:
    counts = {s: sum(w.state == s for w in report.workers) for s in STATES}
    for w in report.workers:
        line = f"worker {w.index}: {w.state}"
        if w.total:
            line += f" ({w.done}/{w.total} outputs)"
        print(line + (f": {w.detail}" if w.detail else ""))
    for note in report.notes:
        print(f"note: {note}")
    n = len(report.workers)
    print(f"{stage} {out}: {n} worker{'s' if n > 1 else ''}: "
          + ", ".join(f"{counts[s]} {s}" for s in STATES))
    rerun = [w.index for w in report.workers if w.state in ("partial", "missing")]
    stale = [w.index for w in report.workers if w.state == "stale"]
    if stale:
        print(f"stale workers {' '.join(map(str, stale))}: their outputs were made from other "
              f"inputs or settings; the stage refuses to mix runs: use another --out or "
              f"delete {out}")
    if rerun:
        print(f"re-run workers: {' '.join(map(str, rerun))} (--array={array_spec(rerun)})")
    elif report.closing_missing and not stale:
        print(f"all workers complete but {out}/manifest.json is missing (the last worker was "
              "stopped before writing it): re-run any one worker, e.g. worker 0 (--array=0)")
    ok = counts["complete"] == len(report.workers) and not report.closing_missing
    return 0 if ok and not report.notes else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_gen.status", description=__doc__.split(
        "\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--out", required=True, help="the stage's --out folder")
    p.add_argument("--num-workers", type=int, required=True, metavar="N",
                   help="the stage's --num-workers")
    args = p.parse_args(argv)
    if args.num_workers < 1:
        p.error(f"--num-workers {args.num_workers} must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file, not a stage's output folder")
    report = {"captions": captions, "images": images, "import_pairs": import_pairs,
              "write": write}[args.stage](out, args.num_workers)
    if not out.exists():
        report.notes.append(f"{out} does not exist yet: no worker has started")
    return show(args.stage, out, report)


if __name__ == "__main__":
    sys.exit(main())
