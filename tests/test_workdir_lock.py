"""One trainer per workdir (issue 13, class 4): WORKDIR/lock.json with a heartbeat; no jax."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from synthclip_jax.run.workdir_lock import NAME, WorkdirBusy, WorkdirLock


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(workdir, host, pid, heartbeat_age_s):
    now = time.time()
    (workdir / NAME).write_text(json.dumps({"host": host, "pid": pid, "started": now - 3600,
                                            "heartbeat": now - heartbeat_age_s}))


def test_second_acquire_refuses_naming_the_holder(tmp_path):
    with WorkdirLock(tmp_path, stale_minutes=15):
        holder = json.loads((tmp_path / NAME).read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(WorkdirBusy) as busy:
            WorkdirLock(tmp_path, stale_minutes=15).acquire()
    message = str(busy.value)
    assert f"host {socket.gethostname()} pid {os.getpid()}" in message
    assert "started 0h00m" in message and f"delete {tmp_path / NAME}" in message
    assert "\n" not in message
    assert not (tmp_path / NAME).exists()  # released on leaving the block


def test_a_live_lock_of_another_host_refuses(tmp_path):
    write_lock(tmp_path, "other-host", 12345, heartbeat_age_s=60)
    with pytest.raises(WorkdirBusy, match="host other-host pid 12345 .*heartbeat 0h01m"):
        WorkdirLock(tmp_path, stale_minutes=15).acquire()
    assert json.loads((tmp_path / NAME).read_text())["host"] == "other-host"  # left alone


def test_a_dead_pid_on_this_host_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, socket.gethostname(), pid, heartbeat_age_s=1)
    with WorkdirLock(tmp_path, stale_minutes=15):
        assert json.loads((tmp_path / NAME).read_text())["pid"] == os.getpid()
    assert f"pid {pid} is no longer running" in caplog.text


def test_a_stale_heartbeat_of_another_host_is_taken_over(tmp_path, caplog):
    write_lock(tmp_path, "other-host", 12345, heartbeat_age_s=16 * 60)
    with WorkdirLock(tmp_path, stale_minutes=15):
        assert json.loads((tmp_path / NAME).read_text())["host"] == socket.gethostname()
    assert "heartbeat is 0h16m" in caplog.text


def test_a_half_written_lock_counts_as_stale(tmp_path):
    (tmp_path / NAME).write_text('{"host": "x", "pi')
    with WorkdirLock(tmp_path, stale_minutes=15):
        assert json.loads((tmp_path / NAME).read_text())["pid"] == os.getpid()


def test_the_heartbeat_moves_while_the_lock_is_held(tmp_path):
    with WorkdirLock(tmp_path, stale_minutes=15, heartbeat_every_s=0.05):
        first = json.loads((tmp_path / NAME).read_text())["heartbeat"]
        time.sleep(0.3)
        later = json.loads((tmp_path / NAME).read_text())["heartbeat"]
    assert later > first
    assert not list(tmp_path.iterdir())  # no lock, no temporary left


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
    lock = WorkdirLock(tmp_path, stale_minutes=15)
    lock.acquire()
    write_lock(tmp_path, "other-host", 12345, heartbeat_age_s=0)  # took it over meanwhile
    lock.release()
    assert json.loads((tmp_path / NAME).read_text())["host"] == "other-host"
