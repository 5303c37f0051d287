"""Smoke tests of the benchmark scripts (output format only, no timing assertions)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.xla_env import xla_flags

ROOT = Path(__file__).resolve().parents[1]


def run_module(module, *args, env=None, timeout=900):
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def single_device_env():
    """The environment without conftest's fake-device flag: the bench runs as a user runs it."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags()
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
def test_train_step_tiny_output_format():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = run_module("tools.bench.train_step", "--size", "tiny", "--repeats", "1",
                     "--steps_per_repeat", "1", "--peak_n", "1024", env=single_device_env())
    lines = out.strip().splitlines()
    assert re.fullmatch(r"ratio ours/peer = \d+\.\d\d", lines[-1]), lines[-1]
    # Same model on both sides: equal parameter counts, no warning.
    params = re.search(r"ours: .*?([\d,]+) params; peer \(own process\): .*?([\d,]+) params", out)
    assert params and params.group(1) == params.group(2), out
    assert "WARNING" not in out
    # The open_clip peer (open_clip.model.CLIP + ClipLoss): same parameter count, its own ratio.
    params = re.search(r"ours: ([\d,]+) params; open_clip \(own process\): .*?([\d,]+) params",
                       out)
    assert params and params.group(1) == params.group(2), out
    assert re.search(r"^ratio ours/open_clip = \d+\.\d\d ", out, re.M), out
    for name in ("ours", "peer", "open_clip"):
        row = re.search(rf"^{name}\s+([\d.]+)\s+\S+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$", out, re.M)
        assert row, out
        assert float(row.group(1)) > 0


@pytest.mark.slow
def test_resnet_step_output_format():
    pytest.importorskip("torchvision")
    out = run_module("tools.bench.resnet_step", "--depth", "18", "--image_size", "32",
                     "--batch", "2", "--text_width", "32", "--text_depth", "1", "--embed_dim",
                     "16", "--repeats", "1", "--steps_per_repeat", "1", env=single_device_env())
    params = re.findall(r"([\d,]+) params", out)
    assert len(params) >= 2 and len(set(params)) == 1, out  # the same model on both sides
    assert re.search(r"^ratio ours/peer = \d+\.\d\d", out, re.M), out


@pytest.mark.slow
def test_sigmoid_memory_output_format():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = run_module("tools.bench.sigmoid_memory", "--batches", "64", "--loss_batches",
                     "256,512", "--steps", "1", env=env)
    assert "8 x cpu devices" in out, out
    step_rows = re.findall(r"^\s+64\s+8\s+(sigmoid|sigmoid_ring)\s+([\d.]+)\s+", out, re.M)
    assert [r[0] for r in step_rows] == ["sigmoid", "sigmoid_ring"], out
    temp = {}
    for batch, loss, mib in re.findall(r"^\s+(256|512)\s+\d+\s+(sigmoid|sigmoid_ring)\s+([\d.]+)",
                                       out, re.M):
        temp[int(batch), loss] = float(mib)
    assert len(temp) == 4, out
    # Doubling the global batch at a fixed device count doubles b and B: the all-gather form's
    # b x B logits grow ~4x, the ring's b x b blocks too, but its b x E features only 2x.
    growth = {loss: temp[512, loss] / temp[256, loss] for loss in ("sigmoid", "sigmoid_ring")}
    assert growth["sigmoid"] > growth["sigmoid_ring"], growth


@pytest.mark.slow
def test_input_output_format():
    out = run_module("tools.bench.input", "--config", "configs/demo_cpu.py", "--records", "64",
                     "--batch", "8", "--workers", "0,1", "--train_batch", "8",
                     "--train_steps", "1", env=single_device_env())
    rows = re.findall(r"^\s+([01])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+|nan)$", out, re.M)
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[1]) > 0 for r in rows), out
    assert float(rows[0][3]) > 0 and rows[1][3] == "nan", out  # per CPU-second: 0 workers only
    assert re.search(r"^trainer consumes [\d.]+ examples/s", out, re.M), out


@pytest.mark.slow
def test_mesh_efficiency_output_format():
    out = run_module("tools.bench.mesh_efficiency", "--sizes", "demo", "--meshes",
                     "8,1,1:1,8,1", "--steps", "1", env=dict(os.environ, JAX_PLATFORMS="cpu"))
    rows = re.findall(r"^\s+\((\d), (\d), (\d)\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert [r[:3] for r in rows] == [("8", "1", "1"), ("1", "8", "1")], out
    assert float(rows[0][4]) == 1.0  # the first mesh is the reference
