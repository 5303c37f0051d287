"""Stage 3: concept matching + MetaCLIP balancing of the captions, with exact-duplicate removal.

    python -m data_gen.balance --captions 'captions/*.jsonl' --concepts concepts.txt \
        --out balanced/ --t 10 --seed 0 [--worker-index I --num-workers N --phase all|count|sample]

Rules (SynthCLIP TextGen/substr_matching.py + balancing.py, from MetaCLIP):
- A caption with "\\n" is dropped; others are cleaned like data_gen.captions.clean_llm_caption.
- Exact duplicate captions (after cleaning) are removed; the first copy in sorted-file order is
  kept with its source fields.
- Matching is case-sensitive: concept e matches if f" {e} " is a substring of spacing(caption)
  (caption padded with spaces, `, . ; : ? ! \\`` surrounded by spaces, tab/newline/CR -> space).
  `match` does it without scanning the bank per caption: spacing(caption).split(" ") gives
  tokens T whose " "-joined runs T[i:j] are exactly the substrings with a space on each side, so
  e matches iff it equals some run of len(e.split(" ")) tokens; runs of each length a bank entry
  has are looked up in a dict. Same result as `match_naive` (tested on random inputs).
- count[e] = number of unique captions matching e; a caption is kept if, over its matched
  concepts in bank order, any passes `random() < t / max(count[e], t)`; unmatched captions
  are dropped. The random numbers come from random.Random(hash(seed, caption)), so the result
  depends on neither file order nor the worker count (SynthCLIP's `random` was unseeded).

Streaming and memory: two passes over the files (count, then sample; matches are recomputed
rather than stored). Duplicates are found with a set of 8-byte blake2b digests of the
captions (data_gen.digest_set: 16-32 bytes per unique caption, ~0.5 GB for 30M; the chance of
a false duplicate is ~n^2/2^65, 2e-5 at 30M). Memory is then that set, plus the bank's matcher
(~0.3 KB an entry) and its counts; tools/bench/balance.py measures it.
Workers without a coordinator: worker I owns the captions whose digest % N == I (duplicates
share a digest, so dedup stays exact). Phase `count` writes `counts-IIIII-of-NNNNN.json`;
phase `sample` needs all N of them (sums them) and writes `kept-IIIII-of-NNNNN.jsonl` and
`balance_stats-IIIII-of-NNNNN.json`; worker 0 also writes `entry_counts.json`. Phase `all`
(default) runs both, which needs N = 1 or the other workers' count files already there.
With N = 1 the outputs are `kept.jsonl` and `balance_stats.json`. Finished outputs are skipped;
OUT/.fingerprint-balance.json records what they were made from (caption files' size and mtime,
the bank, t, seed, N), and a run with other inputs or settings into the same OUT is refused.
A caption row that is not a JSON object with a string "caption" stops the stage, naming the line.
Rows of kept*.jsonl: the source row (concept, seed, model, ...) + caption + `concepts` (matched).
"""
import glob
import hashlib
import json
import random
import sys
from pathlib import Path

from data_gen import fingerprint
from data_gen.caption_rows import caption_rows
from data_gen.captions import clean_llm_caption
from data_gen.common import stage_parser, add_worker_args, check_worker_args, worker_suffix
from data_gen.concepts import load_bank
from data_gen.digest_set import DigestSet
from data_gen.progress import Progress
from synthclip_jax.run.files import atomic_path
from synthclip_jax.config import cli_paths

PUNCTS_TO_WRAP = [",", ".", ";", ":", "?", "!", "`"]
CHARS_TO_SPACE = ["\t", "\n", "\r"]


def spacing(text: str) -> str:
    spaced = f" {text} "
    for punct in PUNCTS_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


def match_naive(text: str, bank) -> list:
    """The reference rule: ids of the entries e with f" {e} " in spacing(text)."""
    spaced = spacing(text)
    return [i for i, entry in enumerate(bank) if f" {entry} " in spaced]


class Matcher:
    def __init__(self, bank):
        self.ids = {}  # entry -> its ids (a repeated entry matches under each id, as naive)
        for i, entry in enumerate(bank):
            self.ids.setdefault(entry, []).append(i)
        self.lengths = sorted({len(e.split(" ")) for e in self.ids})

    def match(self, text: str) -> list:
        tokens = spacing(text).split(" ")
        found = set()
        for n in self.lengths:
            for i in range(len(tokens) - n + 1):
                found.update(self.ids.get(" ".join(tokens[i:i + n]), ()))
        return sorted(found)


def digest(caption: str) -> int:
    return int.from_bytes(hashlib.blake2b(caption.encode(), digest_size=8).digest(), "little")


def unique_captions(files, stats, worker_index, num_workers, desc, quiet=False):
    """Yields (row, cleaned caption) of this worker's first copies; counts what it drops."""
    seen = DigestSet()
    bar = Progress(desc, None, "captions", quiet)
    for k, path in enumerate(files):
        for row in caption_rows(path):
            stats["read"] += 1
            bar.update(fraction=k / len(files) or None)
            caption = clean_llm_caption(row["caption"])
            if caption is None:
                stats["multiline"] += 1
                continue
            h = digest(caption)
            if h % num_workers != worker_index:
                continue
            if not seen.add(h):
                stats["duplicates"] += 1
                continue
            yield row, caption
    bar.close()


def keep(caption: str, matched, counts, t: float, seed: int) -> bool:
    rng = random.Random(f"{seed}\0{caption}")  # str seeds are hashed with sha512: stable
    return any(rng.random() < t / max(counts[e], t) for e in matched)


def new_stats():
    return {"read": 0, "multiline": 0, "duplicates": 0, "unique": 0, "unmatched": 0, "kept": 0}


def count_phase(files, matcher, bank, args, path):
    stats, counts = new_stats(), [0] * len(bank)
    for _, caption in unique_captions(files, stats, args.worker_index, args.num_workers,
                                      "balance count", args.quiet):
        stats["unique"] += 1
        for e in matcher.match(caption):
            counts[e] += 1
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"counts": counts, "stats": stats}))


def sample_phase(files, matcher, bank, args, out, suffix):
    count_files = [out / f"counts-{worker_suffix(i, args.num_workers)}.json"
                   for i in range(args.num_workers)]
    missing = [str(p) for p in count_files if not p.exists()]
    if missing:
        raise SystemExit(f"balance: sample phase needs every worker's counts; missing {missing}")
    counts = [0] * len(bank)
    for p in count_files:
        for e, c in enumerate(json.loads(p.read_text())["counts"]):
            counts[e] += c
    if args.worker_index == 0 and not (out / "entry_counts.json").exists():
        with atomic_path(out / "entry_counts.json") as tmp:
            tmp.write_text(json.dumps({bank[e]: c for e, c in enumerate(counts) if c},
                                      ensure_ascii=False, indent=0))
    stats = new_stats()

    def rows():
        for row, caption in unique_captions(files, stats, args.worker_index, args.num_workers,
                                            "balance sample", args.quiet):
            stats["unique"] += 1
            matched = matcher.match(caption)
            if not matched:
                stats["unmatched"] += 1
            elif keep(caption, matched, counts, args.t, args.seed):
                stats["kept"] += 1
                yield {**row, "caption": caption, "concepts": [bank[e] for e in matched]}

    kept = "kept.jsonl" if args.num_workers == 1 else f"kept-{suffix}.jsonl"
    stats_name = ("balance_stats.json" if args.num_workers == 1
                  else f"balance_stats-{suffix}.json")
    # the kept file is renamed last: its existence marks this worker done, stats included
    with atomic_path(out / kept) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        stats.update(t=args.t, seed=args.seed, files=len(files))
        with atomic_path(out / stats_name) as stats_tmp:
            stats_tmp.write_text(json.dumps(stats, indent=1) + "\n")
    print(f"balance: {stats} -> {out / kept}", file=sys.stderr)


def main(argv=None):
    p = stage_parser("balance", __doc__)
    p.add_argument("--captions", required=True, help="Glob of caption JSONL files (quoted).")
    p.add_argument("--concepts", required=True, help="The concept bank used for matching.")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--t", type=float, default=10, help="Balancing threshold (SynthCLIP 10).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", choices=["all", "count", "sample"], default="all")
    p.add_argument("--quiet", action="store_true",
                   help="no live progress line: a line every 10 s (as when not on a terminal)")
    add_worker_args(p)
    args = p.parse_args(argv)
    check_worker_args(args.worker_index, args.num_workers)
    cli_paths.input_file("balance", "--concepts", args.concepts)
    cli_paths.output_dir("balance", "--out", args.out)
    files = sorted(glob.glob(args.captions))
    if not files:
        raise SystemExit(f"balance: no files match {args.captions!r}")
    bank = load_bank(args.concepts, dedup=False)
    matcher, out = Matcher(bank), Path(args.out)
    suffix = worker_suffix(args.worker_index, args.num_workers)
    counts_path = out / f"counts-{suffix}.json"
    # finished outputs are skipped: only if they were made from these captions and settings
    made_from = {"captions": fingerprint.files_stamp(files),
                 "concepts": fingerprint.file_stamp(args.concepts), "t": float(args.t),
                 "seed": args.seed, "num_workers": args.num_workers}
    fingerprint.claim(out / ".fingerprint-balance.json", made_from, stage="balance",
                      fix="use another --out, or delete it to balance again")
    if args.phase in ("all", "count"):
        if counts_path.exists():
            print(f"balance: {counts_path} exists, skipping the count", file=sys.stderr)
        else:
            count_phase(files, matcher, bank, args, counts_path)
    if args.phase in ("all", "sample"):
        kept = out / ("kept.jsonl" if args.num_workers == 1 else f"kept-{suffix}.jsonl")
        if kept.exists():
            print(f"balance: {kept} exists, skipping", file=sys.stderr)
        else:
            sample_phase(files, matcher, bank, args, out, suffix)


if __name__ == "__main__":
    main()
