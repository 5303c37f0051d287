"""End to end through `python -m synthclip_jax.main`: workdir files, SIGTERM + resume, the demo."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.total_steps=24", "--config.batch_size=16", "--config.warmup_steps=2",
        "--config.model.embed_dim=16", "--config.model.image.width=32",
        "--config.model.image.depth=2", "--config.model.image.heads=2",
        "--config.model.text.width=32", "--config.model.text.depth=2",
        "--config.model.text.heads=2", "--config.log.every_steps=1",
        "--config.checkpoint.every_steps=5"]


def main_cmd(workdir, *overrides):
    return [sys.executable, "-m", "synthclip_jax.main", "--config=configs/demo_cpu.py",
            f"--workdir={workdir}", *overrides]


def read_metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_then_rerun_continues_exactly(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(main_cmd(straight, *TINY), cwd=ROOT, check=True, capture_output=True)

    proc = subprocess.Popen(main_cmd(stopped, *TINY), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 7):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "SIGTERM: checkpoint saved" in out
    stopped_at = len(read_metrics(stopped))
    assert 7 <= stopped_at < 24  # really stopped mid-run, not at a scheduled checkpoint only

    rerun = subprocess.run(main_cmd(stopped, *TINY), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from step {stopped_at}" in rerun.stderr

    a, b = read_metrics(straight), read_metrics(stopped)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 25))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-7), (x["step"], x, y)
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-7)
    config = json.loads((stopped / "config.json").read_text())
    assert config["total_steps"] == 24 and config["model"]["image"]["width"] == 32
    assert set(a[0]) >= {"step", "loss", "lr", "examples_per_sec"}


@pytest.mark.slow
def test_demo_config_learns(tmp_path):
    """The demo's own config, shortened: the loss falls well below its start (ln 64 = 4.16)."""
    run = subprocess.run(main_cmd(tmp_path, "--config.total_steps=200"), cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert losses[0] > 3.5 and min(losses[-3:]) < 1.5, losses
    assert (tmp_path / "config.json").exists() and (tmp_path / "checkpoints" / "200").exists()


def test_nonfinite_streak_stops_with_clear_error(tmp_path):
    config = tiny_train_config()
    config.lr, config.warmup_steps = 1e38, 0  # first update overflows the parameters
    config.optim.grad_clip_norm, config.optim.max_nonfinite_in_a_row = 0.0, 3
    config.log.every_steps, config.checkpoint.every_steps = 1, 0
    with pytest.raises(loop.NonFiniteError, match="3 steps in a row had non-finite"):
        loop.train(config, tmp_path, devices=jax.devices()[:1])


def test_eval_mode_cli_without_checkpoint_fails_clearly(tmp_path):
    run = subprocess.run(main_cmd(tmp_path, "--mode=eval"), cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode != 0 and "no checkpoint" in run.stderr
