"""The one check of the paths a command is given, before it does any work: an input that is a
folder where a file is wanted, an output folder that is a file, or a place that cannot be
written (read-only, another user's) ends in one line naming the flag, the path, what is wrong
and the fix (`SystemExit` with that line: exit status 1, no traceback), instead of a traceback
from deep inside the stage, or a stage that quietly does nothing.

Standard library only (data_gen's vLLM environment imports it, as files.py). Remote paths
(gs://...) are not checked here: their readers name them.
"""
import os


def _remote(path) -> bool:
    return "://" in os.fspath(path)


def _fail(who: str, flag: str, path, problem: str, fix: str):
    raise SystemExit(f"{who}: {flag} {os.fspath(path)} {problem}; {fix}")


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_writable(who, flag, path, fix):
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        _fail(who, flag, path, f"cannot be created: {existing} is a file, not a folder", fix)
    if not os.access(existing, os.W_OK | os.X_OK):
        _fail(who, flag, path, f"cannot be written: {existing} is read-only for this user", fix)


def input_file(who: str, flag: str, path) -> None:
    """`path` must be a readable file."""
    if path is None or _remote(path):
        return
    if os.path.isdir(path):
        _fail(who, flag, path, "is a folder, not a file", f"give the file itself ({flag} "
              f"{os.path.join(os.fspath(path), 'NAME')})")
    if not os.path.exists(path):
        _fail(who, flag, path, "does not exist", "check the path")
    if not os.access(path, os.R_OK):
        _fail(who, flag, path, "cannot be read (permissions)", "make it readable")


def output_dir(who: str, flag: str, path) -> None:
    """`path` must be a folder, or creatable as one, that this user can write."""
    if _remote(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(who, flag, path, "is a file, not a folder", "give a folder (new or existing)")
    _check_writable(who, flag, path, "choose a folder you can write to")


def output_file(who: str, flag: str, path) -> None:
    """`path` must be a file (new or existing, not a folder) in a place this user can write."""
    if _remote(path):
        return
    if os.path.isdir(path):
        _fail(who, flag, path, "is a folder, not a file", "give a file name (e.g. "
              f"{os.path.join(os.fspath(path), 'concepts.txt')})")
    _check_writable(who, flag, os.path.dirname(os.path.abspath(path)),
                    "choose a place you can write to")
