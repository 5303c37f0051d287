"""What a stage's finished output was made from, so that a rerun on changed input is refused
instead of answering "already complete" and keeping stale files.

A fingerprint is a JSON-able dict: the settings that change the output, and each input file's
size and mtime (`file_stamp`; cheap at any scale, and a copy that changes neither size nor mtime
is the same input). A stage writes it into its output folder when it starts (`claim`); a later
run, or another worker, whose fingerprint differs gets a one-line error saying which entries
differ and how to proceed, instead of a silent mix of two runs.

Stdlib only, like data_gen.common: the vLLM stage imports it in an environment without jax.
"""
import json
import os
from pathlib import Path
from typing import Callable, Iterable


def file_stamp(path) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def files_stamp(paths: Iterable) -> list:
    return [file_stamp(p) for p in paths]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for each entry that differs, nested dicts as dotted keys."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{name}.")
        elif isinstance(a, list) and isinstance(b, list):
            diffs.append(f"{name}: {_list_change(a, b)}")
        elif str(key).endswith("sha256"):
            diffs.append(f"{name}: changed")
        else:
            diffs.append(f"{name}: {_short(a)} -> {_short(b)}")
    return diffs


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _list_change(old: list, new: list) -> str:
    """For lists of file stamps: the first file that changed, rather than two long lists."""
    if len(old) != len(new):
        return f"{len(old)} -> {len(new)} entries"
    for a, b in zip(old, new):
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict) and a.get("path") == b.get("path"):
                return f"{b['path']} changed (size or mtime)"
            return f"{_short(a)} -> {_short(b)}"
    return "changed"


def describe(old: dict, new: dict) -> str:
    return "; ".join(differences(old, new)) or "nothing"


def stored(path) -> "dict | None":
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a torn file from a killed writer: treat as absent and write it again


def write(path, fingerprint: dict) -> None:
    """Atomically; several workers may write the same content at once, so each uses its own
    temporary name (no clean-up of others' temporaries, unlike common.atomic_path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def claim(path, fingerprint: dict, *, stage: str, fix: str, overwrite: bool = False,
          clear: Callable[[], None] = lambda: None) -> None:
    """Records `fingerprint` at `path`, or finds it there already. A different one refuses with
    `fix` (how to proceed, e.g. "rerun with --overwrite, or use another --out"); with
    `overwrite`, `clear()` removes the outputs made from it first."""
    old = stored(path)
    if old == fingerprint:
        return
    if old is not None:
        if not overwrite:
            raise SystemExit(f"{stage}: {Path(path).parent} holds output made with other "
                             f"settings or inputs ({describe(old, fingerprint)}; recorded in "
                             f"{path}); {fix}")
        clear()
    write(path, fingerprint)
