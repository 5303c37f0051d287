"""Patch dropout (models/patch_dropout.py): exactly round(f*N) patches dropped per image, the
class token kept, subsets differing per image and per step and reproducible from (seed, step);
evaluation bitwise equal to the model without it; the train step equal across meshes, remat,
gradient accumulation (full negatives), a resumed state, and with the CLIPS captioner."""
import math

import jax
import numpy as np
import pytest
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.config.base import base
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data.source import make_train_source
from synthclip_jax.model_flops import step_flops
from synthclip_jax.models.patch_dropout import kept_patch_indices, num_kept
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_clips_parallel import batches as clips_batches, clips_config
from tests.test_train_parallel import assert_params_close, tiny_train_config

FRACTION = 0.5


def dropout_config(mesh=(1, 1, 1), accum=1, fraction=FRACTION):
    c = tiny_train_config("softmax", mesh, accum)
    c.model.image.patch_dropout = fraction
    return c


@pytest.mark.parametrize("n,f", [(16, 0.5), (196, 0.75), (49, 0.5), (10, 0.25), (4, 0.3)])
def test_counts_round_half_up(n, f):
    dropped = math.floor(f * n + 0.5)
    indices = np.asarray(kept_patch_indices(0, 3, 8, n, f))
    assert num_kept(n, f) == n - dropped
    assert indices.shape == (8, n - dropped)
    for row in indices:  # distinct valid patch indices, ascending
        assert len(set(row)) == len(row) and row.min() >= 0 and row.max() < n
        assert (np.diff(row) > 0).all()


def test_subsets_differ_per_image_and_step_and_repeat_from_seed_and_step():
    a = np.asarray(kept_patch_indices(0, 5, 16, 196, 0.5))
    assert len({tuple(r) for r in a}) == 16  # every image its own subset
    assert not np.array_equal(a, np.asarray(kept_patch_indices(0, 6, 16, 196, 0.5)))
    assert not np.array_equal(a, np.asarray(kept_patch_indices(1, 5, 16, 196, 0.5)))
    np.testing.assert_array_equal(a, np.asarray(kept_patch_indices(0, 5, 16, 196, 0.5)))
    # the step may be traced (it comes from the train state)
    traced = jax.jit(lambda s: kept_patch_indices(0, s, 16, 196, 0.5))(np.int32(5))
    np.testing.assert_array_equal(a, np.asarray(traced))


def test_tokens_are_the_class_token_and_the_kept_patches_with_their_positions():
    config = dropout_config()
    model = build_model(config, 0)
    vit = model.visual
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    keep = kept_patch_indices(0, 0, 4, 16, FRACTION)
    out = np.asarray(vit.tokens(images, keep))
    assert out.shape == (4, 1 + 8, 16)
    # independent of keep_patches: embed every patch (NumPy), add positions, gather by index
    p = 4
    patches = images.reshape(4, 4, p, 4, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(4, 16, -1)
    kernel = np.asarray(vit.conv1_kernel[...]).reshape(-1, 16)
    emb = np.concatenate([np.broadcast_to(np.asarray(vit.class_embedding[...]), (4, 1, 16)),
                          patches @ kernel], axis=1) + np.asarray(vit.positional_embedding[...])
    rows = np.asarray(keep)
    gathered = np.stack([np.concatenate([e[:1], e[1:][r]]) for e, r in zip(emb, rows)])
    expected = vit.ln_post(vit.transformer(vit.ln_pre(gathered), causal=False))
    np.testing.assert_allclose(out, np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_evaluation_is_bitwise_the_model_without_patch_dropout():
    with_dropout, without = build_model(dropout_config(), 0), build_model(dropout_config(
        fraction=0.0), 0)
    images = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    a, b = with_dropout.encode_image(images), without.encode_image(images)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the dropout does change the training forward
    keep = kept_patch_indices(0, 0, 4, 16, FRACTION)
    assert not np.allclose(np.asarray(with_dropout.encode_image(images, keep)), np.asarray(a))


def test_flops_count_the_kept_patches():
    full, dropped = step_flops(dropout_config(fraction=0.0)), step_flops(dropout_config())
    assert dropped < full


def test_config_check_rejects_bad_fractions():
    for fraction, image_size in ((1.0, 16), (-0.1, 16), (0.9, 8)):
        c = dropout_config(fraction=fraction)
        c.data.image_size = image_size
        with pytest.raises(ConfigError, match="model.image.patch_dropout"):
            validate(c, check_paths=False)


def run(config, devices, steps=3):
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    state, train_step = setup.init(), make_train_step(config, setup, mesh)
    data = make_train_source(config)
    losses, states = [], []
    for _ in range(steps):
        states.append(jax.device_get(state))
        state, metrics = train_step(state, sharding.global_batch(next(data), mesh))
        losses.append(float(metrics["loss"]))
    return dict(losses=np.array(losses), params=jax.device_get(state["params"]), states=states,
                step=train_step, setup=setup, mesh=mesh)


@pytest.fixture(scope="module")
def single():
    return run(dropout_config(), jax.devices()[:1])


@pytest.mark.slow
def test_step_on_fsdp_tensor_mesh_with_remat_and_accumulation_matches_single_device(single):
    """8 devices (data 2, fsdp 2, tensor 2), remat, and 2 micro-batches with whole-batch
    negatives: the kept subsets are drawn for the whole batch and split with the images, so
    the step equals the 1-device, 1-micro-batch one."""
    config = dropout_config((2, 2, 2), accum=2)
    config.model.remat = True
    got = run(config, jax.devices())
    np.testing.assert_allclose(got["losses"], single["losses"], rtol=1e-5)
    assert_params_close(got["params"], single["params"])


def test_resumed_state_draws_the_same_subsets(single):
    """The subsets come from the state's step alone: continuing from the state saved after
    step 2 (moved back onto the devices, as a restore does) computes step 3 bit for bit."""
    data = make_train_source(dropout_config())
    for _ in range(2):
        next(data)
    state = jax.device_put(single["states"][2], single["setup"].state_shardings)
    state, metrics = single["step"](state, sharding.global_batch(next(data), single["mesh"]))
    assert float(metrics["loss"]) == single["losses"][2]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]),
                 single["params"])


def test_clips_captioner_sees_the_kept_tokens():
    c = clips_config("softmax")
    c.model.image.patch_dropout = 0.75
    model = build_model(c, 0)
    batch = clips_batches(c, steps=1)[0]
    images = batch["image"].astype(np.float32) / 255.0
    keep = kept_patch_indices(0, 0, c.batch_size, 16, 0.75)
    inputs = batch["caption"][:, :-1]
    graphdef, params = nnx.split(model)

    @jax.jit  # one compile instead of hundreds of eager dispatches
    def both(params):
        model = nnx.merge(graphdef, params)
        outputs, logits = model.clips_outputs(images, batch["web_text"], inputs, patch_keep=keep)
        kept_tokens = model.visual.tokens(images, keep)
        expected = model.captioner(kept_tokens, model.text.tokens(batch["web_text"]), inputs)
        return outputs.image, logits, model.encode_image(images, keep), expected, kept_tokens

    image, logits, expected_image, expected, kept_tokens = both(params)
    assert kept_tokens.shape[1] == 1 + 4
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(image), np.asarray(expected_image), rtol=1e-6,
                               atol=1e-6)
