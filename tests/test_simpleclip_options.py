"""simple-clip's pieces: MLP projection heads, Adam with coupled L2 decay; and the config rules
of the SimCLIP/simple-clip keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo_cpu
from synthclip_jax.config.base import base
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.export.openclip import ExportError, check_openclip
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.optimizer import make_optimizer, make_schedule, weight_decay_mask
from tests.test_config_check import refusal


def tiny(projection):
    c = demo_cpu.get_config()
    c.model.projection = projection
    c.model.embed_dim = 24  # != the widths (64): the head maps d -> embed_dim
    return c


def test_mlp_head_is_linear_relu_linear():
    config = tiny("mlp")
    model = build_model(config, 0)
    params = nnx.to_pure_dict(nnx.state(model))
    assert params["visual"]["proj"].shape == (64, 64)  # Linear(d, d), the tower's own
    assert params["visual_head"]["kernel"].shape == (64, 24)
    assert params["text_head"]["kernel"].shape == (64, 24)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1, 400, size=(3, 16)).astype(np.int32)
    for raw, head, encoded in (
            (model.visual(images), params["visual_head"]["kernel"], model.encode_image(images)),
            (model.text(tokens), params["text_head"]["kernel"], model.encode_text(tokens))):
        want = np.maximum(np.asarray(raw), 0) @ np.asarray(head)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(np.asarray(encoded), want, atol=1e-5)
    # a weight: decayed by the default policy, as the towers' projections
    mask = weight_decay_mask(nnx.state(model, nnx.Param), "openclip")
    assert mask["visual_head"]["kernel"] and mask["text_head"]["kernel"]
    linear = nnx.to_pure_dict(nnx.state(build_model(tiny("linear"), 0)))
    assert "visual_head" not in linear and linear["visual"]["proj"].shape == (64, 24)


def test_export_refuses_mlp_heads():
    check_openclip(tiny("linear"))
    with pytest.raises(ExportError, match="model.projection='mlp'"):
        check_openclip(tiny("mlp"))


def test_adam_l2_matches_torch_adam_weight_decay():
    import torch
    config = base()
    config.optim.update(name="adam_l2", grad_clip_norm=0.0)
    config.lr, config.total_steps, config.warmup_steps, config.weight_decay = 1e-2, 20, 3, 0.1
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
    opt = make_optimizer(config, {"w": True, "bias": False})
    state = opt.init(params)
    ours = jax.tree.map(jnp.asarray, params)
    w = torch.nn.Parameter(torch.tensor(params["w"], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(params["bias"], dtype=torch.float64))
    o = config.optim
    ref = torch.optim.Adam([{"params": [w], "weight_decay": config.weight_decay},
                            {"params": [b], "weight_decay": 0.0}],
                           lr=1.0, betas=(o.b1, o.b2), eps=o.eps)
    schedule = make_schedule(config)
    for t in range(6):
        grads = {k: rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()}
        ours, state, _ = jax.jit(opt.apply)(ours, grads, state)
        for group in ref.param_groups:
            group["lr"] = float(schedule(t))
        w.grad, b.grad = (torch.tensor(grads[k], dtype=torch.float64) for k in ("w", "bias"))
        ref.step()
        np.testing.assert_allclose(np.asarray(ours["w"]), w.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(ours["bias"]), b.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
    # decoupled AdamW differs from it on the decayed leaf
    config.optim.name = "adamw"
    adamw = make_optimizer(config, {"w": True, "bias": False})
    other, st = jax.tree.map(jnp.asarray, params), adamw.init(params)
    rng = np.random.default_rng(0)
    rng.normal(size=(4, 3)), rng.normal(size=(3,))
    for t in range(6):
        grads = {k: rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()}
        other, st, _ = jax.jit(adamw.apply)(other, grads, st)
    assert not np.allclose(np.asarray(other["w"]), np.asarray(ours["w"]), atol=1e-5)


RULES = {  # key the error names: {key: bad value}
    "data.clusters.modality": {"data.clusters.modality": "audio"},
    "data.clusters.cluster_size": {"data.clusters.cluster_size": 1},
    "data.clusters.neighborhood": {"data.clusters.neighborhood": 0},
    "data.clusters.every_steps": {"data.clusters.every_steps": -1},
    "data.clusters.proportion": {"data.clusters.proportion": 1.5},
    "data.clusters.warmup_epochs": {"data.clusters.warmup_epochs": (0, 2)},
    "data.clusters.enabled": {"data.clusters.enabled": True, "data.batch_order": "o.npy"},
    "loss.label_smoothing": {"loss.label_smoothing": 1.0},
    "loss.softmax_bias": {"loss.softmax_bias": True},
    "optim.name": {"optim.name": "sgd"},
    "model.projection": {"model.projection": "mlp3"},
}


@pytest.mark.parametrize("key", sorted(RULES))
def test_rule_names_the_key(key):
    assert refusal(RULES[key]).key == key


def test_sigmoid_rejects_softmax_options_and_shapes_rejects_clusters():
    config = demo_cpu.get_config()
    config.loss.name, config.model.logit_bias_init = "sigmoid", -10.0
    config.loss.label_smoothing = 0.1
    with pytest.raises(ConfigError, match="loss.label_smoothing"):
        validate(config, check_paths=False)
    config = demo_cpu.get_config()
    config.data.source, config.data.clusters.enabled = "shapes", True
    with pytest.raises(ConfigError, match="data.clusters.enabled"):
        validate(config, check_paths=False)
