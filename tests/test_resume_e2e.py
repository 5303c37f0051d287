"""Through `python -m synthclip_jax.main`: a resume into another run refuses before touching the
workdir, a held workdir refuses, an allowed change resumes, and a finished run leaves no lock."""
import json
import os
import socket
import subprocess
import time

import pytest

from tests.test_main_e2e import ROOT, TINY, main_cmd

SHORT = [*TINY, "--config.total_steps=3", "--config.checkpoint.every_steps=0",
         "--config.data.procedural.num_train=64", "--config.data.num_workers=0"]


def run(workdir, *overrides):
    return subprocess.run(main_cmd(workdir, *SHORT, *overrides), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_resume_refuses_another_run_and_the_lock_guards_the_workdir(tmp_path):
    first = run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "checkpoints" / "3").exists()
    assert not (tmp_path / "lock.json").exists()  # released on a normal exit
    stored = (tmp_path / "config.json").read_text()

    wider = run(tmp_path, "--config.model.image.width=64")
    assert wider.returncode == 2, wider.stderr
    (line,) = [x for x in wider.stderr.splitlines() if x.startswith("config error:")]
    assert "model.image.width: 32 -> 64" in line and "resume.allow_changes" in line
    assert "Traceback" not in wider.stderr
    assert (tmp_path / "config.json").read_text() == stored

    now = time.time()  # a live trainer (this test process) holds the workdir
    (tmp_path / "lock.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}))
    busy = run(tmp_path, "--config.total_steps=4")
    assert busy.returncode == 1, busy.stderr
    assert f"workdir busy: {tmp_path} is in use by a trainer on host" in busy.stderr
    assert f"pid {os.getpid()}" in busy.stderr and "Traceback" not in busy.stderr
    assert (tmp_path / "config.json").read_text() == stored
    (tmp_path / "lock.json").unlink()

    longer = run(tmp_path, "--config.total_steps=4")
    assert longer.returncode == 0, longer.stderr
    assert "resumed from step 3" in longer.stderr
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 4
    assert (tmp_path / "config.step3.json").read_text() == stored
    assert not (tmp_path / "lock.json").exists()
