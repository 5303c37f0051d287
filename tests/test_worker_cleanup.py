"""A trainer killed with SIGKILL leaves no Grain workers and no shared memory behind.

The child process builds the real training source (pipeline.make_grain_source, 2 Grain workers),
takes one batch and waits to be killed. Without `die_with_parent` (the control) the workers
outlive it; then `reap_orphans` at the next start is what removes them.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthclip_jax.data import worker_cleanup

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys, time
from synthclip_jax.data import pipeline, worker_cleanup
from tests.test_pipeline import data_config, write_dataset
if sys.argv[2] == "unguarded":
    from tests import test_worker_cleanup
    pipeline.die_with_parent = test_worker_cleanup.unguarded
worker_cleanup.tag_children(sys.argv[1])
from pathlib import Path
pattern = write_dataset(Path(sys.argv[1]))
source = pipeline.make_grain_source(data_config(pattern, num_workers=2), 0, 1)
next(source)
print("ready", flush=True)
time.sleep(600)
"""


def unguarded(*args):
    """A worker_init_fn that does nothing (the state before die_with_parent)."""


def children(pid: int) -> set:
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids.update(int(k) for k in (task / "children").read_text().split())
    return kids


def shared_memory_of(pids) -> set:
    names = set()
    for pid in pids:
        try:
            names.update(re.findall(r"/dev/shm/psm_\w+", Path(f"/proc/{pid}/maps").read_text()))
        except OSError:
            pass
    return names


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition, timeout_s=30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def start_and_kill(tmp_path, mode):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), mode], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    workers = {k for k in children(proc.pid)
               if b"multiprocessing.spawn" in Path(f"/proc/{k}/cmdline").read_bytes()}
    assert len(workers) == 2, workers
    segments = shared_memory_of([proc.pid, *workers])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return workers, segments


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_workers_die_with_a_killed_trainer(tmp_path):
    workers, segments = start_and_kill(tmp_path, "guarded")
    assert wait_until(lambda: not any(map(alive, workers))), "workers outlived the trainer"
    # the segments go once the workers' resource tracker sees them die: give a loaded CI
    # machine (two xdist workers and their subprocesses) time for that
    assert wait_until(lambda: not any(map(os.path.exists, segments)), timeout_s=90.0), \
        "shared memory left"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")
def test_the_next_start_reaps_workers_a_killed_trainer_left(tmp_path):
    workers, segments = start_and_kill(tmp_path, "unguarded")
    try:
        time.sleep(1.0)
        assert all(map(alive, workers)), "the control: without the guard, workers stay"
        if any(worker_cleanup._orphaned_worker_tag(str(w)) is None for w in workers):
            pytest.skip("orphans are adopted by a subreaper here, not by pid 1")
        assert worker_cleanup.reap_orphans(tmp_path / "another_run") == 0
        assert all(map(alive, workers))
        assert worker_cleanup.reap_orphans(tmp_path) == 2
        assert wait_until(lambda: not any(map(alive, workers)))
        assert wait_until(lambda: not any(map(os.path.exists, segments))), "shared memory left"
    finally:
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass
