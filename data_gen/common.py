"""What every data_gen stage shares: work splitting across machines, atomic outputs, progress.
(Atomic writing and JSON lines themselves are `synthclip_jax.run.files`, shared with the trainer.)

A stage runs as N independent workers (`--worker-index I --num-workers N`, e.g. a SLURM array),
with no coordinator: worker I takes items I, I+N, I+2N, ... of the stage's input, writes its own
output file(s) under a temporary name and renames them when complete, and skips outputs that
already exist, so a preempted or rerun worker loses and duplicates nothing. (`--num-shards`
counts output shards, in write and import_pairs; the stages that used `--shard-index
--num-shards` for workers still accept them, as deprecated aliases.)
"""
import argparse
import hashlib
import json
from typing import Iterable, Sequence

# Standard library only, like this module: the vLLM stage imports both in its own environment.
from synthclip_jax.run.files import atomic_path


def stage_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """`python -m data_gen.STAGE --help`: the module docstring's first paragraph as description,
    the rest (details, examples) as epilog, line breaks kept."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(prog=f"python -m data_gen.{stage}", description=head,
                                   epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_worker_args(parser: argparse.ArgumentParser, old_aliases: bool = True) -> None:
    """--worker-index/--num-workers (args.worker_index, args.num_workers). `old_aliases`: also
    accept --shard-index/--num-shards, the old spellings of the stages whose --num-shards meant
    workers (not for write, where --num-shards counts output shards)."""
    index, count = ["--worker-index"], ["--num-workers"]
    alias = ""
    if old_aliases:
        index, count = index + ["--shard-index"], count + ["--num-shards"]
        alias = " {} is a deprecated alias."
    parser.add_argument(*index, dest="worker_index", type=int, default=0, metavar="I",
                        help="This worker's index in [0, num-workers) (default 0)."
                        + alias.format("--shard-index"))
    parser.add_argument(*count, dest="num_workers", type=int, default=1, metavar="N",
                        help="Number of workers splitting this stage (default 1)."
                        + alias.format("--num-shards"))


def check_worker_args(worker_index: int, num_workers: int) -> None:
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise SystemExit(f"--worker-index {worker_index} must lie in [0, --num-workers "
                         f"{num_workers})")


def worker_items(items: Sequence, worker_index: int, num_workers: int) -> list:
    """Items I, I+N, I+2N, ...: disjoint across workers, together all items."""
    check_worker_args(worker_index, num_workers)
    return list(items[worker_index::num_workers])


def worker_suffix(worker_index: int, num_workers: int) -> str:
    """The IIIII-of-NNNNN of a worker's output file names."""
    return f"{worker_index:05d}-of-{num_workers:05d}"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_jsonl_atomic(path, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def progress(items: Iterable, total: int | None, desc: str, every_seconds: float = 5.0,
             quiet: bool = False):
    """Yields items, reporting progress to stderr (data_gen.progress: a live line on a terminal,
    a line every `every_seconds` otherwise, and one at the end)."""
    from data_gen.progress import progress as report
    yield from report(items, total, desc, quiet=quiet, every_seconds=every_seconds)
