"""One trainer per workdir: `WORKDIR/lock.json`, created exclusively, with a heartbeat.

Two trainers on one workdir would both run, interleave `metrics.jsonl` and overwrite each
other's checkpoints. Process 0 of a run creates `lock.json` (host, pid, start and heartbeat
times) only if it does not exist, and a thread rewrites the heartbeat every few seconds while
the run lives; normal exit, an exception or SIGTERM (the loop stops and returns) delete it.
A second trainer refuses in one line naming the holder. A lock left by a killed run (`kill -9`,
the OOM killer, a lost VM) is stale and taken over with a warning: on the same host when its pid
is gone, on any host when its heartbeat is older than `resume.stale_lock_minutes`.

Exclusive create: local paths use `os.open(O_CREAT | O_EXCL)`, atomic on POSIX file systems.
Remote paths (gs://) go through etils epath, which has no create-if-absent: there the lock
checks existence, then writes, so two starts within the same second could both pass. The GCS
way is an upload with the precondition `if_generation_match=0` (google-cloud-storage
`blob.upload_from_string(data, if_generation_match=0)` fails with 412 if the object exists);
it is not used here because the package is not a dependency.
"""
import json
import os
import socket
import threading
import time

from absl import logging
from etils import epath

NAME = "lock.json"


class WorkdirBusy(RuntimeError):
    """Another live trainer holds the workdir; the message is one line naming it."""


def is_local(path: epath.Path) -> bool:
    return "://" not in os.fspath(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def create_exclusive(path: epath.Path, text: str) -> bool:
    """Writes `text` to a new file at `path`; False if the file already exists."""
    if is_local(path):
        try:
            fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    if path.exists():  # not atomic remotely: see the module docstring
        return False
    path.write_text(text)
    return True


def replace(path: epath.Path, text: str):
    """Rewrites `path` so that a reader never sees half a file (local: rename over it)."""
    if is_local(path):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)  # object stores replace whole objects


def describe_age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class WorkdirLock:
    def __init__(self, workdir, stale_minutes: float, heartbeat_every_s: float | None = None):
        self.path = epath.Path(workdir) / NAME
        self.stale_s = stale_minutes * 60
        # A few beats per stale period, so one slow write does not make a live run look dead.
        self.every_s = heartbeat_every_s or min(30.0, self.stale_s / 4)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = None

    def record(self) -> dict:
        return {"host": self.host, "pid": self.pid, "started": self.started,
                "heartbeat": time.time(),
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}

    def stale_reason(self, holder: dict, now: float) -> str | None:
        """Why the lock `holder` wrote belongs to a dead run, or None if it may be alive."""
        if holder.get("host") == self.host and not pid_alive(int(holder.get("pid", -1))):
            return f"its pid {holder.get('pid')} is no longer running on this host"
        silent = now - float(holder.get("heartbeat", 0))
        if silent > self.stale_s:
            return (f"its heartbeat is {describe_age(silent)} old (stale after "
                    f"resume.stale_lock_minutes={self.stale_s / 60:g})")
        return None

    def read_holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a process killed mid-write: no heartbeat
            return {"host": "?", "pid": -1, "started": 0, "heartbeat": 0}

    def acquire(self):
        """Takes the lock or raises WorkdirBusy; starts the heartbeat thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # lost races with another starter, at most twice
            if create_exclusive(self.path, json.dumps(self.record())):
                break
            holder = self.read_holder()
            if holder is None:  # released between our create and our read
                continue
            now = time.time()
            reason = self.stale_reason(holder, now)
            if reason is None:
                raise WorkdirBusy(
                    f"{self.path.parent} is in use by a trainer on host {holder.get('host')} pid "
                    f"{holder.get('pid')} (started {describe_age(now - holder.get('started', 0))}"
                    f" ago, last heartbeat {describe_age(now - holder.get('heartbeat', 0))} ago);"
                    f" stop it first, or if it is dead delete {self.path}")
            logging.warning("taking over %s left by host %s pid %s: %s", self.path,
                            holder.get("host"), holder.get("pid"), reason)
            # Two starters taking over the same stale lock: both delete, one create wins.
            self.path.unlink(missing_ok=True)
        else:
            raise WorkdirBusy(f"could not take {self.path}: other trainers keep creating it")
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()

    def ours(self, holder: dict | None) -> bool:
        return bool(holder) and holder.get("host") == self.host and holder.get("pid") == self.pid

    def _beat(self):
        while not self._stop.wait(self.every_s):
            try:
                holder = self.read_holder()
                if not self.ours(holder):  # taken over after a long silence: do not clobber it
                    logging.error("%s now belongs to host %s pid %s: another trainer may be "
                                  "writing this workdir", self.path, (holder or {}).get("host"),
                                  (holder or {}).get("pid"))
                    return
                replace(self.path, json.dumps(self.record()))
            except OSError as error:  # a flaky remote write must not kill training
                logging.warning("workdir lock heartbeat failed: %s", error)

    def release(self):
        """Stops the heartbeat and deletes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.ours(self.read_holder()):
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
