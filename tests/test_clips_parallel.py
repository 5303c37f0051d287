"""The CLIPS train step (two captions + captioner) on 8 devices computes what it computes on one:
loss, caption_loss, contrastive_loss and the updated parameters, for data parallel, FSDP and
FSDP + tensor meshes (float32 reduction order aside)."""
import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import assert_params_close, tiny_train_config

STEPS = 2
VOCAB, START, END = 50, 48, 49  # a small vocabulary (pad 0): the head stays cheap
KEYS = ("loss", "caption_loss", "contrastive_loss")


def clips_config(loss, mesh=(1, 1, 1)):
    c = tiny_train_config(loss, mesh)
    c.data.source = "tfrecord"
    c.loss.two_captions = True
    c.model.captioner.update(enabled=True, width=16, depth=1, heads=2, num_queries=6)
    return c


def token_rows(rng, n, length):
    """start, 1..length-2 random word ids, end, padding."""
    rows = np.zeros((n, length), np.int32)
    for row in rows:
        k = rng.integers(1, length - 1)
        row[:k + 2] = [START, *rng.integers(1, START, k), END]
    return rows


def batches(config, steps=STEPS):
    rng = np.random.default_rng(0)
    b, size, ctx = config.batch_size, config.data.image_size, config.model.text.context_length
    return [{"image": rng.integers(0, 256, (b, size, size, 3), np.uint8),
             "text": token_rows(rng, b, ctx), "web_text": token_rows(rng, b, ctx),
             "caption": token_rows(rng, b, config.model.captioner.num_queries + 1)}
            for _ in range(steps)]


def run(config, devices):
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    state, step = setup.init(), make_train_step(config, setup, mesh)
    metrics = []
    for batch in batches(config):
        state, m = step(state, sharding.global_batch(batch, mesh))
        metrics.append([float(m[k]) for k in KEYS])
    return np.array(metrics), jax.device_get(state["params"])


_single = {}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=str)
def test_clips_step_on_8_devices_matches_one(mesh, loss="softmax"):
    assert len(jax.devices()) == 8
    if loss not in _single:
        _single[loss] = run(clips_config(loss), jax.devices()[:1])
    ref_metrics, ref_params = _single[loss]
    metrics, params = run(clips_config(loss, mesh), jax.devices())
    np.testing.assert_allclose(metrics, ref_metrics, rtol=1e-5)
    assert (ref_metrics[1] != ref_metrics[0]).all()  # the first step changed every part
    assert_params_close(params, ref_params)
    assert params["captioner"]["head"].shape == (16, VOCAB)
