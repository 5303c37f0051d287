"""A run's own files after a crash tore them (issue 29, class 1): each case is CLEAR (one line
naming the file and the fix, no traceback) or RIGHT (the run resumes and its output is checked
against an uninterrupted run). One tiny run (module fixture) is trained once; the cases damage
copies of it."""
import json
import logging
import shutil

import jax
import numpy as np
import pytest

from synthclip_jax.config import resume_check
from synthclip_jax.config.error import ConfigError
from synthclip_jax.run.files import DamagedFile, replace_text
from synthclip_jax.run.metrics import MetricWriter
from synthclip_jax.train import loop
from synthclip_jax.train.checkpoint import load_params
from tests.test_train_parallel import tiny_train_config


def config_of(total):
    c = tiny_train_config()
    c.total_steps, c.checkpoint.every_steps, c.log.every_steps, c.checkpoint.keep = total, 2, 1, 5
    c.eval.every_steps = 0
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-step run with checkpoints 2 and 4 and its config.json (as main.py writes)."""
    workdir = tmp_path_factory.mktemp("trained")
    config = config_of(4)
    resume_check.check(config, workdir).write_config()
    loop.train(config, workdir, devices=jax.devices()[:1])
    return workdir


def copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


def tear(path, keep_fraction=0.5):
    """A kill while the last line was written: its end is lost."""
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    path.write_text(text[:len(text) - len(last) - 1] + last[:int(len(last) * keep_fraction)])


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.jsonl"])
def test_torn_last_line_of_a_run_log_is_dropped_with_a_warning(tmp_path, caplog, name):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 5)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tear(path)
    with caplog.at_level(logging.WARNING):
        writer = MetricWriter(tmp_path, resume_step=4, filename=name, tensorboard=False)
    writer.write(4, {"loss": 0.25})
    writer.close()
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows
    assert any(f"{name} line 4 is cut short" in r.getMessage() for r in caplog.records)


def test_a_damaged_line_before_the_last_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(DamagedFile, match=r"metrics\.jsonl line 2: not JSON .*remove that line"):
        MetricWriter(tmp_path, resume_step=4, tensorboard=False)


def test_replace_text_is_whole_and_0644(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    replace_text(path, "new\n")
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]
    assert (path.stat().st_mode & 0o777) == 0o644 & ~_umask()


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def torn_config(trained, tmp_path):
    workdir = copy(trained, tmp_path)
    tear(workdir / "config.json", 0.3)
    return workdir


def test_torn_config_json_refuses_a_resume_naming_it(trained, tmp_path):
    workdir = torn_config(trained, tmp_path)
    with pytest.raises(DamagedFile) as raised:
        resume_check.check(config_of(6), workdir)
    message = str(raised.value)
    assert "\n" not in message and f"{workdir}/config.json is not JSON" in message
    assert "delete it to resume without comparing configs" in message


def test_torn_config_json_refuses_an_export_naming_it(trained, tmp_path, capsys):
    from tools import convert_to_openclip
    workdir = torn_config(trained, tmp_path)
    assert convert_to_openclip.main(["--workdir", str(workdir), "--out",
                                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {workdir}/config.json is not JSON") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_torn_config_json_refuses_an_evaluation_naming_it(trained, tmp_path, capsys):
    from synthclip_jax.evaluate.__main__ import main
    workdir = torn_config(trained, tmp_path)
    assert main(["--workdir", str(workdir), "--zeroshot", f"x={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {workdir}/config.json is not JSON") and "\n" not in err
    with pytest.raises(DamagedFile, match="config.json is not JSON"):
        load_params(workdir)


def test_a_refused_resume_leaves_config_json_as_it_was(trained, tmp_path):
    """mesh.data may change on resume, but 3 does not divide 8 devices: refused by the loop,
    after main.py used to have renamed config.json and written the refused one."""
    workdir = copy(trained, tmp_path)
    stored = (workdir / "config.json").read_text()
    config = config_of(6)
    config.mesh.data = 3
    plan = resume_check.check(config, workdir)
    assert plan.changed  # total_steps, mesh.data: allowed changes
    with pytest.raises(ConfigError):
        loop.train(config, workdir, devices=jax.devices(), started=plan.write_config)
    assert (workdir / "config.json").read_text() == stored
    assert not list(workdir.glob("config.step*.json"))


def test_a_workdir_a_crash_left_resumes_to_the_uninterrupted_result(trained, tmp_path, caplog):
    """A crash while step 4 was saved and logged: the step-4 checkpoint lost a file (and a save
    of a step 6 was cut short), metrics.jsonl's last line is torn. The resume falls back to
    step 2 with a warning, clears the temporary, and retrains steps 3-4 to the same params."""
    workdir = copy(trained, tmp_path)
    (workdir / "checkpoints" / "4" / "state" / "_METADATA").unlink()
    tmp = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    tear(workdir / "metrics.jsonl")
    with caplog.at_level(logging.WARNING):
        loop.train(config_of(4), workdir, devices=jax.devices()[:1])
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint 4 cannot be read" in messages and "resuming from step 2" in messages
    assert not tmp.exists() and len(list((workdir / "checkpoints").glob("4.unreadable-*"))) == 1
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in straight],
                               rtol=1e-5)
    _, resumed, step = load_params(workdir)
    _, reference, _ = load_params(trained)
    assert step == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 resumed, reference)


@pytest.mark.slow
def test_first_ctrl_c_saves_and_exits_130(tmp_path):
    """It ended in a KeyboardInterrupt traceback, with nothing saved since the last checkpoint."""
    import signal
    import subprocess
    import time
    from tests.test_main_e2e import ROOT, TINY, main_cmd
    proc = subprocess.Popen(main_cmd(tmp_path, *TINY, "--config.checkpoint.every_steps=0",
                                     "--config.data.num_workers=0"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "SIGINT: checkpoint saved at step" in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 24
    assert not (tmp_path / "lock.json").exists()
