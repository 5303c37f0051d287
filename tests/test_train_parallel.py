"""The sharded train step computes what the 1-device step computes, for every mesh and loss."""
import math

import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.config.base import base
from synthclip_jax.data.source import make_train_source
from synthclip_jax.losses import make_contrastive_loss
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step

STEPS = 3


def tiny_train_config(loss="softmax", mesh=(1, 1, 1), accum=1):
    c = base()
    c.total_steps, c.batch_size, c.lr, c.warmup_steps = 10, 16, 1e-3, 1
    c.loss.name = loss
    if loss != "softmax":
        c.model.logit_scale_init, c.model.logit_bias_init = math.log(10.0), -10.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.train.grad_accum_steps = accum
    c.data.source, c.data.image_size = "synthetic_shapes", 16
    c.model.embed_dim = 8
    c.model.image.update(width=16, depth=2, heads=2, patch_size=4)
    c.model.text.update(width=16, depth=2, heads=2, context_length=12, vocab_size=50)
    return c


def run(config, devices, steps=STEPS):
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    state, train_step = setup.init(), make_train_step(config, setup, mesh)
    data = make_train_source(config)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, sharding.global_batch(next(data), mesh))
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state["params"])


_single = {}


def assert_params_close(params, reference):
    """float32 reduction order differs across meshes; Adam's normalisation keeps it tiny."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
                 params, reference)


def single_device(loss, accum=1):
    if (loss, accum) not in _single:
        _single[loss, accum] = run(tiny_train_config(loss, accum=accum), jax.devices()[:1])
    return _single[loss, accum]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["softmax", "sigmoid", "sigmoid_ring"])
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 2, 2)], ids=str)
def test_mesh_matches_single_device(loss, mesh):
    assert len(jax.devices()) == 8
    ref_losses, ref_params = single_device(loss)
    losses, params = run(tiny_train_config(loss, mesh), jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] != losses[0]  # the steps did change the model
    assert_params_close(params, ref_params)


def test_params_are_placed_by_rules():
    config = tiny_train_config("softmax", (2, 2, 2))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    setup = make_train_setup(config, mesh)
    state = setup.init()
    kernel = state["params"]["visual"]["transformer"]["resblocks"]["c_fc_kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    # Adam moments follow their parameter.
    mu = state["opt_state"].adamw[0].mu["visual"]["transformer"]["resblocks"]["c_fc_kernel"]
    assert mu.sharding.spec == kernel.sharding.spec
    assert kernel.addressable_shards[0].data.shape == (2, 8, 32)


@pytest.mark.slow
@pytest.mark.parametrize("loss,mesh,accum", [("softmax", (2, 2, 2), 2),
                                              ("sigmoid", (2, 2, 1), 4),
                                              ("sigmoid_ring", (8, 1, 1), 2)], ids=str)
def test_grad_accumulation_with_full_negatives_is_the_whole_batch_step(loss, mesh, accum):
    """The default accum_negatives='full': same losses and updates as one whole-batch step."""
    config = tiny_train_config(loss, mesh, accum=accum)
    assert config.train.accum_negatives == "full"
    losses, params = run(config, jax.devices()[:math.prod(mesh)])
    ref_losses, ref_params = single_device(loss)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_params_close(params, ref_params)


@pytest.mark.slow
def test_grad_accumulation_micro_negatives_averages_micro_batches():
    """accum=2 on a (2,2,2) mesh: the loss is the mean of the two micro-batch losses computed
    directly (rows 0,2,4.. and 1,3,5..), and the update matches the 1-device accumulated run."""
    config = tiny_train_config("softmax", (2, 2, 2), accum=2)
    config.train.accum_negatives = "micro"
    losses, params = run(config, jax.devices(), steps=1)
    first = next(make_train_source(config))
    model = build_model(config, config.seed)
    loss_fn = make_contrastive_loss("softmax", sharding.make_mesh(
        tiny_train_config().mesh, jax.devices()[:1]))
    micro = [loss_fn(model(first["image"][m::2], first["text"][m::2])) for m in range(2)]
    np.testing.assert_allclose(losses[0], np.mean(micro), rtol=1e-5)
    whole = float(loss_fn(model(first["image"], first["text"])))
    assert abs(losses[0] - whole) > 1e-4  # the negatives really are per micro-batch
    ref_config = tiny_train_config("softmax", accum=2)
    ref_config.train.accum_negatives = "micro"
    ref_losses, ref_params = run(ref_config, jax.devices()[:1], 1)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_params_close(params, ref_params)


def test_nonfinite_step_is_skipped_and_counted():
    config = tiny_train_config("softmax", (8, 1, 1))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    setup = make_train_setup(config, mesh)
    state, train_step = setup.init(), make_train_step(config, setup, mesh)
    before = jax.device_get(state["params"])
    batch = next(make_train_source(config))
    batch["image"][0, 0, 0, 0] = np.nan
    for expected in (1, 2):
        state, metrics = train_step(state, sharding.global_batch(batch, mesh))
        assert int(metrics["nonfinite_in_a_row"]) == expected
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), before)
    batch["image"][0, 0, 0, 0] = 0.0
    state, metrics = train_step(state, sharding.global_batch(batch, mesh))
    assert int(metrics["nonfinite_in_a_row"]) == 0 and int(metrics["nonfinite_total"]) == 2


@pytest.mark.parametrize("mesh,batch,match", [
    ((3, 1, 1), 16, "needs 3 devices"),
    ((-1, -1, 1), 16, "at most one -1"),
    ((8, 1, 1), 12, "batch_size=12 must be divisible"),
])
def test_mesh_and_batch_errors(mesh, batch, match):
    config = tiny_train_config("softmax", mesh)
    config.batch_size = batch
    with pytest.raises(ValueError, match=match):
        m = sharding.make_mesh(config.mesh, jax.devices())
        sharding.check_batch_size(config.batch_size, m)


def test_parameter_that_does_not_divide_names_itself():
    config = tiny_train_config("softmax", (1, 1, 8))  # 2 heads over 8-way tensor parallel
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    with pytest.raises(ValueError, match=r"parameter \S+ .* does not divide over mesh axis "
                                         r"tensor of size 8"):
        make_train_setup(config, mesh)
