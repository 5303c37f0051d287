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
        "--config.checkpoint.every_steps=5", "--config.eval.every_steps=0",
        "--config.data.procedural.num_train=512", "--config.data.procedural.num_retrieval=16",
        "--config.data.procedural.zeroshot_per_class=1"]


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
def test_demo_config_learns_and_generalises(tmp_path):
    """The demo's own config, shortened: it renders its data, the loss falls well below its
    start (ln 64 = 4.16), and zero-shot accuracy on colour/shape pairs never seen in training is
    far above chance."""
    run = subprocess.run(main_cmd(tmp_path, "--config.total_steps=250",
                                  "--config.eval.every_steps=250",
                                  "--config.data.procedural.num_train=4000"),
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert losses[0] > 3.5 and min(losses[-3:]) < 2.0, losses
    (result,) = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert result["step"] == 250
    assert result["zeroshot/top1"] > 3 * result["zeroshot/chance_top1"], result
    assert result["retrieval/t2i_R@5"] > 10 * 5 * result["retrieval/chance_t2i_R@1"], result
    assert "convert_to_openclip" in run.stdout
    for name in ("config.json", "curves.png", "checkpoints/250", "data/manifest.json"):
        assert (tmp_path / name).exists(), name


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
