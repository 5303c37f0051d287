"""Stage 1: the concept bank, one concept per line (UTF-8).

    python -m data_gen.concepts --out concepts.txt --builtin
    python -m data_gen.concepts --out concepts.txt --input metadata.json --dedup

Input: MetaCLIP's `metadata.json` (a JSON list of strings, ~500k entries; the reference bank of
SynthCLIP) or a text file with one concept per line; `--builtin` is the small bank shipped in
`data_gen/concept_bank.txt` (a few hundred common visual concepts) for demos and tests.
Normalisation: strip surrounding whitespace, drop empty entries, keep case (matching is
case-sensitive, MetaCLIP/SynthCLIP). Entries with an inner tab/newline/CR are dropped: they could
not be written one per line, and the matcher turns those characters into spaces so they could
never match anyway. `--dedup` drops repeated entries keeping the first. Entry ids downstream are
line numbers of this file.

The bank is one small file, so there is nothing to split: with --num-workers N only worker 0
writes it (the others exit at once), which lets one launch script run every stage the same way.
An existing --out is left as is unless --overwrite.
"""
import json
import sys
from pathlib import Path

from data_gen.common import stage_parser, add_worker_args, check_worker_args
from synthclip_jax.run.files import atomic_path
from synthclip_jax.config import cli_paths

BUILTIN = Path(__file__).with_name("concept_bank.txt")


def read_raw(path) -> list:
    """Entries of a JSON list file or of a text file (one per line), unnormalised."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # MetaCLIP metadata.json
        entries = json.loads(text)
        if not all(isinstance(e, str) for e in entries):
            raise SystemExit(f"{path}: expected a JSON list of strings")
        return entries
    lines = text.split("\n")  # not splitlines(): that also splits on \x0c, \u2028, ...
    return lines[:-1] if lines and lines[-1] == "" else lines  # the final newline


def normalise(entries, dedup: bool = True):
    """Returns (concepts, counts): stripped, non-empty, one-line entries, case kept."""
    out, seen = [], set()
    counts = {"read": 0, "empty": 0, "multiline": 0, "duplicates": 0}
    for entry in entries:
        counts["read"] += 1
        entry = entry.strip()
        if not entry:
            counts["empty"] += 1
        elif any(c in entry for c in "\t\n\r"):
            counts["multiline"] += 1
        elif entry in seen:
            counts["duplicates"] += 1
            if not dedup:
                out.append(entry)
        else:
            seen.add(entry)
            out.append(entry)
    counts["kept"] = len(out)
    return out, counts


def load_bank(path=None, dedup: bool = True) -> list:
    """The concepts of a bank file (JSON list or text; default: the built-in bank)."""
    return normalise(read_raw(path or BUILTIN), dedup=dedup)[0]


def main(argv=None):
    parser = stage_parser("concepts", __doc__)
    parser.add_argument("--out", required=True, help="Concept bank to write (one per line).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="MetaCLIP metadata.json (JSON list) or a text file.")
    source.add_argument("--builtin", action="store_true",
                        help=f"Use the built-in bank ({BUILTIN.name}).")
    parser.add_argument("--dedup", action="store_true",
                        help="Drop repeated entries, keeping the first.")
    parser.add_argument("--overwrite", action="store_true", help="Rewrite an existing --out.")
    add_worker_args(parser)
    args = parser.parse_args(argv)
    check_worker_args(args.worker_index, args.num_workers)
    if args.worker_index != 0:
        print("concepts: one small file, written by worker 0 only; nothing to do",
              file=sys.stderr)
        return
    cli_paths.input_file("concepts", "--input", args.input)
    out = Path(args.out)
    if out.is_dir():  # a folder (e.g. made ahead by a launch script): the bank goes inside
        out = out / "concepts.txt"
        print(f"concepts: --out {args.out} is a folder: writing {out}", file=sys.stderr)
    cli_paths.output_file("concepts", "--out", out)
    if out.exists() and not args.overwrite:
        print(f"concepts: {out} exists, skipping (--overwrite to rewrite)", file=sys.stderr)
        return
    concepts, counts = normalise(read_raw(args.input or BUILTIN), dedup=args.dedup)
    if not concepts:
        raise SystemExit("concepts: no concepts left after normalisation")
    with atomic_path(out) as tmp:
        tmp.write_text("".join(c + "\n" for c in concepts), encoding="utf-8")
    print("concepts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
