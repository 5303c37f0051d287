"""Crash consistency (issue 29): a tiny run with a checkpoint every 2 steps, a metrics row every
step and an evaluation every 4 is killed with SIGKILL at 20 random moments (restoring,
training, saving, writing metrics and eval rows, evaluating); every restart resumes, the last
one finishes, and the result equals an uninterrupted run's: final parameters and every logged
loss. The trainers are forked from one driver process (tests/crash_driver.py) so that a restart
costs a restore and a cached compile, not a new interpreter.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from synthclip_jax.train.checkpoint import load_params
from tests.crash_driver import STEPS
from tests.xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = 20


@pytest.mark.slow
def test_killed_at_random_moments_the_run_finishes_as_if_never_killed(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "XLA_FLAGS": xla_flags()}  # one CPU device: the trainers use one
    proc = subprocess.run([sys.executable, "-m", "tests.crash_driver", str(tmp_path), str(KILLS),
                           "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kills"] == KILLS, report
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _, expected, step = load_params(straight)
    _, got, crashed_step = load_params(crashed)
    assert step == crashed_step == STEPS
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got, expected)

    def rows(workdir, name):
        return [json.loads(x) for x in (workdir / name).read_text().splitlines()]
    a, b = rows(straight, "metrics.jsonl"), rows(crashed, "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
    evals = rows(crashed, "eval.jsonl")
    assert [r["step"] for r in evals] == [4, 8]
    for mine, theirs in zip(evals, rows(straight, "eval.jsonl")):
        assert mine.keys() == theirs.keys()
        np.testing.assert_allclose([mine[k] for k in sorted(mine)],
                                   [theirs[k] for k in sorted(theirs)], rtol=1e-5, atol=1e-6)
    assert not list((crashed / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    json.loads((crashed / "config.json").read_text())
    json.loads((crashed / "provenance.json").read_text())
