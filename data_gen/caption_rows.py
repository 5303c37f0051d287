"""Rows of a caption JSONL file (captions -> balance -> images), checked as they are read.

Each non-blank line must be a JSON object with a string "caption"; anything else stops the
stage with one line naming the file and line number (these files are written by the stages
themselves, so a bad row means a damaged or wrong file, not noise to skip). Stdlib only.
"""
import json
from typing import Iterator


def caption_rows(path) -> Iterator[dict]:
    with open(path, "rb") as f:  # bytes: invalid UTF-8 is then reported with its line
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise SystemExit(f"{where}: not UTF-8 ({e})") from None
            except ValueError as e:
                raise SystemExit(f"{where}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise SystemExit(f"{where}: expected a JSON object with a string \"caption\", "
                                 f"got a JSON {type(row).__name__}")
            if not isinstance(row.get("caption"), str):
                got = "no \"caption\"" if "caption" not in row else (
                    f"\"caption\" of type {type(row['caption']).__name__}")
                raise SystemExit(f"{where}: expected a string \"caption\", got {got}")
            yield row
