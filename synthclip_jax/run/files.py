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


class DamagedFile(ValueError):
    """A file that cannot be read as what it should be; the message is one line naming it, what
    is wrong and what to do."""


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


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _is_remote(path) -> bool:
    return "://" in os.fspath(path)


def replace_text(path, text: str) -> None:
    """Rewrites `path` (pathlib, etils.epath or str) so that a kill at any moment leaves either
    the old file or the new one, never half of either: local files are written beside it, synced
    and renamed over it; object stores (gs://) replace whole objects already. The mode is the
    usual 0644 (less the umask), as a plain write gives, not mkstemp's 0600."""
    if _is_remote(path):
        path.write_text(text)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def read_jsonl_lines(path, warn=None) -> list[str]:
    """The JSON lines of a run's append-only log (metrics.jsonl, eval.jsonl), blank lines
    skipped, tolerating what a kill leaves: a last line that is cut short (not JSON) is dropped,
    with `warn(message)` naming the file. A bad line before the last is not a torn append but a
    damaged file: DamagedFile naming the file and line."""
    text = path.read_text() if hasattr(path, "read_text") else Path(path).read_text()
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    kept = []
    for i, (n, line) in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                if warn is not None:
                    warn(f"{path} line {n} is cut short (a kill while it was written): "
                         f"dropping it ({line[:60]!r})")
                break
            raise DamagedFile(f"{path} line {n}: not JSON ({e}); the file is damaged before "
                             "its last line: repair or remove that line") from e
        kept.append(line)
    return kept


def read_json(path, fix: str):
    """The JSON object in `path`; a file that is not JSON (a kill while it was written, an
    edit gone wrong) raises DamagedFile in one line naming the file and `fix`."""
    try:
        text = path.read_text() if hasattr(path, "read_text") else Path(path).read_text()
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedFile(f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}; "
                         f"torn by a crash or edited?): {fix}") from None
    except UnicodeDecodeError:
        raise DamagedFile(f"{path} is not text (binary or damaged): {fix}") from None
