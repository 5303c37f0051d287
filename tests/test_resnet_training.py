"""BatchNorm running statistics through training (train/step.py, train/state.py).

The reference is PyTorch's own BatchNorm: before every step our weights are copied into
torchvision's resnet18 together with the *reference's* running statistics (weights in train
mode do not depend on the running statistics, so the reference's statistics evolve on their
own), the step's images go through it in train mode, and after 3 steps its running statistics
must equal ours. With gradient accumulation the reference runs each micro-batch from the step's
old statistics and averages the results: one update per step with the mean of the
micro-batches' statistics (train/step.py's documented semantics).
"""
import jax
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.data.source import make_train_source
from synthclip_jax.export.openclip import _flatten
from synthclip_jax.export.torchvision_resnet import to_torchvision
from synthclip_jax.image_normalize import normalize
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.checkpoint import Checkpointer, load_params
from synthclip_jax.train.optimizer import make_optimizer, weight_decay_mask
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_train_parallel import tiny_train_config

STEPS = 3


def resnet_config(mesh=(1, 1, 1), accum=1, negatives="full"):
    c = tiny_train_config(mesh=mesh, accum=accum)
    c.train.accum_negatives = negatives
    c.model.image.update(tower="resnet", resnet_depth=18, resnet_width=64)  # torchvision's
    c.data.image_size = 32
    c.model.projection = "mlp"
    return c


_batches = []


def batches():
    """STEPS host batches of the shapes source (uint8 images), the same for every run."""
    if not _batches:
        data = make_train_source(resnet_config())
        _batches.extend(next(data) for _ in range(STEPS))
    return _batches


_initial = {}


def initial_state(setup):
    """One seeded initial state for every run (the train state's tree does not depend on the
    mesh or accumulation), placed by `setup`: compiling the ResNet's init once, not per mesh."""
    if not _initial:
        _initial["state"] = jax.device_get(setup.init())
    return jax.device_put(_initial["state"], setup.state_shardings)


_runs = {}


def train(config, devices):
    """-> (the params before each step and after the last, the final state, setup, step, mesh)"""
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    state, train_step = initial_state(setup), make_train_step(config, setup, mesh)
    trajectory = [jax.device_get(state["params"])]
    for batch in batches():
        state, _ = train_step(state, sharding.global_batch(batch, mesh))
        trajectory.append(jax.device_get(state["params"]))
    return trajectory, state, setup, train_step, mesh


def visual(params) -> dict:
    return {k: np.asarray(v) for k, v in _flatten(params["visual"]).items()}


def torch_resnet18(params, stats=None):
    """torchvision resnet18 holding our visual weights (and `stats`, a torchvision-keyed dict
    of running statistics, instead of ours when given); fc -> identity (pooled features)."""
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_torchvision(visual(params)).items()}
    if stats is not None:
        state.update({k: v.clone() for k, v in stats.items()})
    model.load_state_dict(state)
    return model


def running_stats(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var"))}


def reference_stats(trajectory, config) -> dict:
    """PyTorch's running statistics after the steps, from our weights of each step."""
    accum, d = config.train.grad_accum_steps, config.data
    stats = None
    for params, batch in zip(trajectory, batches()):
        images = np.asarray(normalize(batch["image"], d.mean, d.std)).transpose(0, 3, 1, 2)
        moved = []
        for m in range(accum):  # micro-batch m: rows m, m + accum, ... (train/step.py split)
            model = torch_resnet18(params, stats).train()
            with torch.no_grad():
                model(torch.from_numpy(np.ascontiguousarray(images[m::accum])))
            moved.append(running_stats(model))
        stats = {k: torch.stack([s[k] for s in moved]).mean(0) for k in moved[0]}
    return stats


def assert_stats_match(params, stats):
    ours = to_torchvision(visual(params))
    assert len(stats) == 40  # 20 BatchNorms in resnet18
    for key, value in stats.items():
        np.testing.assert_allclose(ours[key], value.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


def one_device_run():
    if not _runs:
        _runs["1dev"] = train(resnet_config(), jax.devices()[:1])
    return _runs["1dev"]


# 8 devices: the batch statistics are the global (micro-)batch's, not each device's rows.
@pytest.mark.parametrize("mesh,accum,negatives", [
    ((1, 1, 1), 1, "full"),
    ((8, 1, 1), 2, "micro"),
    ((2, 4, 1), 2, "full"),
], ids=["1dev", "data8_accum2_micro", "fsdp4_accum2_full"])
@pytest.mark.slow
def test_running_stats_after_3_steps_equal_pytorch(mesh, accum, negatives):
    config = resnet_config(mesh, accum, negatives)
    if mesh == (1, 1, 1):
        trajectory, *_ = one_device_run()
    else:
        trajectory, *_ = train(config, jax.devices()[:int(np.prod(mesh))])
    before, after = visual(trajectory[0]), visual(trajectory[-1])
    assert not np.allclose(before["bn1/mean"], after["bn1/mean"])  # they moved
    assert_stats_match(trajectory[-1], reference_stats(trajectory[:-1], config))


def test_eval_mode_resume_and_optimizer(tmp_path):
    config = resnet_config()
    trajectory, state, setup, train_step, mesh = one_device_run()
    params = trajectory[-1]

    # Evaluation (the eval-mode graphdef) uses the running statistics, as torch's eval().
    images = np.asarray(normalize(batches()[0]["image"], config.data.mean, config.data.std))
    ours = jax.jit(lambda p, x: nnx.merge(setup.graphdef, p).visual(x))(params, images)
    pooled = torch_resnet18(params).eval()(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    expected = pooled.detach().numpy() @ visual(params)["proj"]
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-5)

    # No optimizer moments and no weight decay for the statistics.
    mu = _flatten(jax.device_get(state["opt_state"].adamw[0].mu))
    assert mu and not [k for k in mu if k.endswith(("/mean", "/var"))]
    assert set(mu) == {k for k in _flatten(params) if not k.endswith(("/mean", "/var"))}
    abstract = nnx.eval_shape(lambda: build_model(config, 0))
    mask = _flatten(weight_decay_mask(nnx.state(abstract, nnx.Param), "all"))
    assert set(mask) == set(mu)

    # A checkpoint restores them bitwise, and the next step from it is the uninterrupted one.
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2)
    checkpointer.save(STEPS, state, {"step": STEPS})
    checkpointer.close()
    restored, _ = Checkpointer(tmp_path / "checkpoints", keep=2).restore(
        STEPS, setup.abstract_state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    batch = sharding.global_batch(batches()[0], mesh)
    resumed, _ = train_step(restored, batch)
    uninterrupted, _ = train_step(jax.tree.map(jax.numpy.copy, state), batch)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["params"]),
                 jax.device_get(uninterrupted["params"]))

    # load_params (evaluation, export) returns the running statistics with the weights.
    (tmp_path / "config.json").write_text(config.to_json())
    _, loaded, step = load_params(tmp_path)
    assert step == STEPS
    np.testing.assert_array_equal(loaded["visual"]["layer4"][1]["bn2"]["var"],
                                  params["visual"]["layer4"][1]["bn2"]["var"])


def test_vit_state_tree_is_unchanged():
    """A model without BatchNorm keeps the train state of before the running statistics
    ({'params': the whole nnx state, 'opt_state': the optimizer over it}), so the
    checkpoints of existing ViT runs restore."""
    config = tiny_train_config()
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    abstract = nnx.eval_shape(lambda: build_model(config, config.seed))
    params = nnx.to_pure_dict(nnx.state(abstract))
    optimizer = make_optimizer(config, weight_decay_mask(nnx.state(abstract), "openclip"))
    old = {"step": 0, "params": params, "opt_state": jax.eval_shape(optimizer.init, params)}
    assert jax.tree.structure(setup.abstract_state) == jax.tree.structure(
        jax.tree.map(lambda x: 0, old))
    assert nnx.graphdef(abstract) == setup.train_graphdef  # nothing switches mode
