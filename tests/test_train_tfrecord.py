"""The trainer on TFRecord shards through Grain workers: learns, and resumes exactly."""
import io
import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from synthclip_jax.data import synthetic
from synthclip_jax.data.tfrecord import ShardWriter, encode_example, shard_name
from synthclip_jax.train import loop
from tests.test_train_parallel import tiny_train_config


def write_shapes_shards(folder, n=96, num_shards=4):
    """Procedural shapes with exact captions, stored as 40 px JPEG records."""
    source = synthetic.ShapesSource(seed=0, global_batch=1, image_size=40, context_length=16,
                                    vocab_size=49408, mean=(0, 0, 0), std=(1, 1, 1))
    writers = [ShardWriter(str(folder / shard_name("shapes", s, num_shards)))
               for s in range(num_shards)]
    for i in range(n):
        image, caption = source.example(i)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=95)
        writers[i % num_shards].write(encode_example(image=buf.getvalue(), captions=[caption],
                                                     key=str(i)))
    for w in writers:
        w.close()
    return str(folder / "*.tfrecord")


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
    config = config_for(write_shapes_shards(tmp_path / "data"), workers)
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
