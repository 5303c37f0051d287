"""The trainer on TFRecord shards through Grain workers: learns, and resumes exactly."""
import json
import shutil

import jax
import numpy as np
import pytest

from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config


def config_for(pattern, workers):
    c = tiny_train_config("softmax", (2, 2, 2))
    c.model.text.update(vocab_size=49408, context_length=16)
    c.data.update(source="tfrecord", train=pattern, num_workers=workers, rrc_scale=(0.8, 1.0))
    c.total_steps, c.checkpoint.every_steps, c.log.every_steps = 8, 4, 1
    return c


def losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_crash_repeats_the_same_steps(tmp_path, workers):
    (tmp_path / "data").mkdir()
    # 96 captioned shapes, 40 px JPEGs in 4 shards (the demo's writer).
    config = config_for(write_shards(tmp_path / "data", "shapes", 0, 96, 4, seed=0,
                                     image_size=40), workers)
    straight = tmp_path / "straight"
    loop.train(config, straight, devices=jax.devices())
    # A crash after the step-4 checkpoint: the step-8 checkpoint never got written.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "8")
    loop.train(config, crashed, devices=jax.devices())
    steps, a = losses(straight)
    steps_b, b = losses(crashed)
    assert steps == steps_b == list(range(1, 9))
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert a[-1] < a[0]  # and it did train
