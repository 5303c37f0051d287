"""Writing a file atomically, and reading JSON lines: the one implementation, used by the TFRecord
writer here and by every data_gen stage.

Standard library only, and `synthclip_jax/__init__.py` imports nothing: data_gen's vLLM stage
runs in an environment of its own (vllm + torch, no jax) and imports this module from the
repository root. It lives here rather than in data_gen because synthclip_jax never imports
data_gen (DESIGN.md); data_gen imports it.
"""
import contextlib
import glob
import json
import os
from pathlib import Path
from typing import Iterator


def temp_path(path) -> Path:
    """This process's temporary name for writing `path`: hidden and suffixed, so a glob such as
    `*.tfrecord` never picks up a half-written file. Temporaries of `path` that an earlier,
    killed writer left are removed: every output has one writer (the worker that owns it)."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yields a temporary path beside `path` (parents created); renamed to `path` only if the
    block succeeds, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path) -> Iterator[dict]:
    """The objects of a JSON-lines file, blank lines skipped. `path` may be any object with
    `.open()` (pathlib, etils.epath for cloud storage) or a string."""
    with (path.open(encoding="utf-8") if hasattr(path, "open")
          else open(path, encoding="utf-8")) as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {line_number}: not JSON ({e})") from e
