"""WORKDIR/provenance.json: which code, libraries and machines made a run (process 0 writes it).

Format: the first launch's record at the top level (the run's identity; tools/tpu/launch.sh
pins relaunches to it), and `launches`, every launch in order (the first included), each the
same record plus `resumed_from_step` (null for the first). A record holds:

  version        synthclip_jax.__version__
  git            {"revision", "dirty", "dirty_files", "source", "reason"}: the commit of the
                 checkout that holds this package; `revision` and `dirty` are null, with a
                 `reason`, when that is unknown (git absent, an installed copy, no checkout)
  libraries      {name: version} for LIBRARIES (importlib.metadata; null if not installed)
  devices        {"platform", "kind", "count", "local_count"}; `process_count`
  platform, python, hostname, command (sys.argv), started (UTC, ISO 8601)

A resume (a checkpoint exists) compares itself with the previous launch and logs a WARNING
naming each change of code or libraries (old -> new): a week-long run that changed code or its
Grain/orbax versions mid-way should say so where its results are read.
"""
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from absl import logging
from etils import epath

import synthclip_jax
from synthclip_jax.run.files import replace_text

FILENAME = "provenance.json"
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
# tools/tpu/launch.sh ships `git archive REV` (no .git) and names REV here.
REVISION_ENV = "SYNTHCLIP_SOURCE_REVISION"
SOURCE_ROOT = Path(synthclip_jax.__file__).resolve().parents[1]
# The files whose edits change what a run computes; edits elsewhere (docs, tools) do not make
# a run "dirty".
TRAINING_SOURCES = ("synthclip_jax", "configs", "requirements.txt")
MAX_DIRTY_FILES = 20


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def _unknown(reason: str) -> dict:
    return {"revision": None, "dirty": None, "dirty_files": [], "source": None,
            "reason": reason}


def source_revision(root: Path = SOURCE_ROOT) -> dict:
    """The git commit of the checkout `root`, whether training sources differ from it, and how
    that was found (or null with the reason)."""
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        if os.environ.get(REVISION_ENV):
            return {"revision": os.environ[REVISION_ENV], "dirty": False, "dirty_files": [],
                    "source": f"${REVISION_ENV} (the launcher shipped `git archive` of it)",
                    "reason": None}
        return _unknown(f"{root} is not a git checkout (an installed package or an archive)")
    if shutil.which("git") is None:
        return _unknown("git is not on PATH")
    try:
        revision = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--",
                       *TRAINING_SOURCES).splitlines()
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return _unknown(f"git failed in {root}: {detail.strip()}")
    return {"revision": revision, "dirty": bool(changed),
            "dirty_files": [line[3:] for line in changed[:MAX_DIRTY_FILES]], "source": "git",
            "reason": None}


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(resumed_from_step: int | None = None, devices=None) -> dict:
    """This launch's record; `devices`: those the run uses (default: all of JAX's)."""
    import jax  # here, not at import: the package stays importable without the JAX stack

    devices = list(devices if devices is not None else jax.devices())
    return {
        "version": synthclip_jax.__version__,
        "git": source_revision(),
        "libraries": library_versions(),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                    "count": len(devices),
                    "local_count": sum(d.process_index == jax.process_index() for d in devices)},
        "process_count": jax.process_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "command": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resumed_from_step": resumed_from_step,
    }


def changes(old: dict, new: dict) -> list[str]:
    """'what: old -> new' for each difference of code or libraries between two launches."""
    found = []

    def compare(what, a, b):
        if a != b:
            found.append(f"{what}: {a} -> {b}")

    old_git, new_git = old.get("git", {}), new["git"]
    compare("git revision", old_git.get("revision"), new_git["revision"])
    compare("uncommitted changes", old_git.get("dirty"), new_git["dirty"])
    compare("synthclip_jax version", old.get("version"), new["version"])
    for name, version in new["libraries"].items():
        compare(name, old.get("libraries", {}).get(name), version)
    return found


def record(workdir, resumed_from_step: int | None, devices=None) -> dict | None:
    """Writes (first launch) or extends (resume) WORKDIR/provenance.json on process 0; returns
    the file's content there, None elsewhere. `resumed_from_step` is None for a fresh run."""
    import jax

    if jax.process_index() != 0:
        return None
    path = epath.Path(workdir) / FILENAME
    launch = collect(resumed_from_step, devices)
    history = None
    if resumed_from_step is not None and path.exists():
        try:
            history = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError) as e:
            logging.warning("%s unreadable (%s): starting its history anew", path, e)
    if history is None:
        history = {**launch, "launches": [launch]}
    else:
        previous = (history.get("launches") or [history])[-1]
        found = changes(previous, launch)
        if found:
            logging.warning("resuming at step %d with other code or libraries than the launch "
                            "of %s: %s (history in %s)", resumed_from_step,
                            previous.get("started"), "; ".join(found), path)
        if (previous.get("devices"), previous.get("process_count")) != (
                launch["devices"], launch["process_count"]):
            logging.info("resuming on %s in %d process(es); the previous launch ran on %s in "
                         "%s", launch["devices"], launch["process_count"],
                         previous.get("devices"), previous.get("process_count"))
        history.setdefault("launches", []).append(launch)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(history, indent=2) + "\n")  # whole even if killed mid-write
    return history
