"""The ResNet image tower computes torchvision's ResNet: the same weights (through the library's
converter, export/torchvision_resnet.py) give the same outputs to 1e-5, in eval mode (running
statistics) and in train mode (batch statistics), and train mode moves the running statistics
exactly as torch's BatchNorm2d does (unbiased variance, momentum 0.1)."""
import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from synthclip_jax.export.fit import unflatten
from synthclip_jax.export.openclip import _flatten
from synthclip_jax.export.torchvision_resnet import from_torchvision, to_torchvision
from synthclip_jax.models.resnet import ResNet, feature_width

EMBED = 16


def torch_reference(depth, seed=0):
    """torchvision's resnet{depth}, random init, with random BatchNorm affine parameters and
    running statistics (so that eval mode is not the identity normalisation), and its classifier
    replaced by a bias-free projection (our `proj`)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 1 + 0.2 * torch.randn(n)
            module.bias.data = 0.2 * torch.randn(n)
            module.momentum = 1.0  # the calibration pass below sets the running statistics
    model.fc = torch.nn.Linear(model.fc.in_features, EMBED, bias=False)
    # Running statistics of another batch (random ones let activations grow ~100x through the
    # residual stages, and float32 rounding with them).
    with torch.no_grad():
        model.train()(torch.from_numpy(images(seed + 100)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def ours_from(model, depth):
    cfg = ml_collections.ConfigDict(dict(resnet_depth=depth, resnet_width=64))
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: ResNet(cfg, embed_dim=EMBED, dtype=jnp.float32, rngs=nnx.Rngs(0))))
    shapes = {k: v.shape for k, v in _flatten(nnx.to_pure_dict(state)).items()}
    # copies: torch updates running statistics in place, and .numpy() shares its memory
    torch_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    flat = from_torchvision(torch_state, shapes)
    flat["proj"] = torch_state["fc.weight"].T
    nnx.replace_by_pure_dict(state, unflatten(flat))
    return nnx.merge(graphdef, state)


def run(ours, x):
    """ours(x) jitted (eager NNX dispatches op by op); the module's state is updated."""
    graphdef, state = nnx.split(ours)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model)

    y, state = forward(state, nhwc(x))
    nnx.update(ours, state)
    return np.asarray(y)


def images(seed=1, n=4, size=64):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def test_resnet18_equals_torchvision_in_eval_and_train_mode():
    model = torch_reference(18)
    ours = ours_from(model, 18)
    x = images(n=3)  # odd batch: train mode's n / (n - 1) matters
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(ours, x), expected, atol=1e-5, rtol=1e-5)

    # train mode: batch statistics, and the running statistics move as torch's
    model.train()
    ours.train()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(ours, x), expected, atol=1e-5, rtol=1e-5)
    moved = to_torchvision(_flatten(nnx.to_pure_dict(nnx.state(ours, nnx.BatchStat))))
    torch_state = model.state_dict()
    assert len([k for k in moved if k.endswith("running_var")]) == 20
    for key, value in moved.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_allclose(value, torch_state[key].numpy(), atol=1e-5, rtol=1e-5,
                                       err_msg=key)


def test_resnet50_equals_torchvision():
    """The Bottleneck v1.5 blocks (train-mode BatchNorm is covered by ResNet-18). The 53
    BatchNorms leave torch's own float32 output ~1e-4 from its float64 one, so the bound here is
    twice torch's float32 error."""
    model = torch_reference(50).eval()
    ours = ours_from(model, 50)
    x = images(n=2)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
        float64 = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    bound = 2 * float(np.abs(expected - float64).max())
    assert bound < 1e-3
    np.testing.assert_allclose(run(ours, x), expected, atol=bound, rtol=bound)


def test_converter_round_trip_and_feature_width():
    model = torch_reference(18)
    ours = ours_from(model, 18)
    flat = _flatten(nnx.to_pure_dict(nnx.state(ours)))
    back = to_torchvision(flat)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    assert feature_width(ml_collections.ConfigDict(dict(resnet_depth=50, resnet_width=64))) == 2048
    assert flat["proj"].shape == (512, EMBED)


def test_hf_export_refuses_a_resnet():
    """(OpenCLIP exports it through its timm tower: tests/test_export_resnet.py.)"""
    from configs import demo_cpu
    from synthclip_jax.export.hf import check_hf
    from synthclip_jax.export.openclip import ExportError

    config = demo_cpu.get_config()
    config.model.image.tower = "resnet"
    with pytest.raises(ExportError, match="model.image.tower='resnet'"):
        check_hf(config)
