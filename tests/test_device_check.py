"""tools/bench/device_check.sh --smoke: the one-shot accelerator check, at tiny size on CPU, so
the script the first GPU/TPU lease runs cannot rot unnoticed."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.xla_env import xla_flags

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["matmul_peak", "b16_step", "step_sweep", "input_pipeline", "loss_vs_float32",
         "data_gen_images", "data_gen_captions"]


@pytest.mark.slow
def test_device_check_smoke(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu", BUDGET_S="1500")
    env["XLA_FLAGS"] = xla_flags()
    proc = subprocess.run(["bash", "tools/bench/device_check.sh", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["smoke"] is True and report["backend"] == "cpu"
    parts = report["parts"]
    assert list(parts) == PARTS, list(parts)
    # every part printed its line as it finished (a cut-off run still shows what it measured)
    printed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PART ")]
    assert printed == PARTS
    for name in PARTS:
        assert "error" not in parts[name], (name, parts[name])
    assert parts["matmul_peak"]["bfloat16_tflop_s"] > 0
    step = parts["b16_step"]
    assert step["samples_per_s"] > 0 and 0 < step["mfu_vs_measured_peak"]
    rows = {row["config"]: row for row in parts["step_sweep"]["rows"]}
    assert rows["b8_softmax_xla"] == {"config": "b8_softmax_xla", "same_as": "b16_step"}
    # no cuDNN on CPU: the cuDNN rows fail, and the sweep goes on. jax's cuDNN path names cuDNN
    # without the CUDA plugin; with it (the `aot` extra) its shape/dtype checks refuse first.
    error = rows["b8_softmax_cudnn"]["error"]
    assert "cuDNN" in error or importlib.util.find_spec("jax_cuda12_plugin"), error
    assert "samples_per_s" not in rows["b8_softmax_cudnn"]
    assert parts["input_pipeline"]["images_per_s_workers_0"] > 0
    assert parts["loss_vs_float32"]["ok"], parts["loss_vs_float32"]
    assert parts["data_gen_images"]["images_per_s"] > 0
    assert parts["data_gen_captions"]["captions_per_s_lower_bound"] > 0


def test_device_check_rejects_unknown_arguments():
    proc = subprocess.run(["bash", "tools/bench/device_check.sh", "--full"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --full" in proc.stderr
