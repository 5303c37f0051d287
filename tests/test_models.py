"""The towers against a plain NumPy forward written from the OpenCLIP definitions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synthclip_jax.config.base import base
from synthclip_jax.models.two_tower import build_model


def tiny_config(**model):
    c = base()
    c.data.image_size = 16
    c.model.embed_dim = 8
    c.model.image.update(width=16, depth=2, heads=2, patch_size=4)
    c.model.text.update(width=16, depth=2, heads=2, context_length=7, vocab_size=50)
    return set_model_keys(c, model)


def set_model_keys(config, overrides: dict):
    """{'image.pool_type': 'avg', 'activation': 'gelu'} -> config.model.image.pool_type = ..."""
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config.model
        for name in path:
            node = node[name]
        node[leaf] = value
    return config


# ---- NumPy reference (float64) ----------------------------------------------------------
ACT = {"gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
       "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
       "quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x))}


def ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def transformer(x, blocks, heads, causal, act, eps):
    depth = blocks["in_proj_kernel"].shape[0]
    for i in range(depth):
        p = {k: (v[i] if not isinstance(v, dict) else {kk: vv[i] for kk, vv in v.items()})
             for k, v in blocks.items()}
        b, s, d = x.shape
        dh = d // heads
        # OpenCLIP layout: in_proj_weight (3D, D) applied as h @ W.T
        w_in = p["in_proj_kernel"].reshape(d, 3 * d).T
        qkv = ln(x, p["ln_1"], eps) @ w_in.T + p["in_proj_bias"].reshape(-1)
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(b, s, heads, dh).transpose(0, 2, 1, 3) for t in (q, k, v))
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        if causal:
            logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        h = (attn @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        x = x + h @ p["out_proj_kernel"].reshape(d, d) + p["out_proj_bias"]
        h = act(ln(x, p["ln_2"], eps) @ p["c_fc_kernel"] + p["c_fc_bias"])
        x = x + h @ p["c_proj_kernel"] + p["c_proj_bias"]
    return x


def reference_image(params, images, cfg):
    p, icfg = params["visual"], cfg.model.image
    b, n = images.shape[0], images.shape[1] // icfg.patch_size
    ps = icfg.patch_size
    # Non-overlapping conv as OpenCLIP's conv1 (weight (D, 3, p, p), no bias).
    w = p["conv1_kernel"].transpose(3, 2, 0, 1)
    x = np.zeros((b, n, n, w.shape[0]))
    for i in range(n):
        for j in range(n):
            patch = images[:, i * ps:(i + 1) * ps, j * ps:(j + 1) * ps, :].transpose(0, 3, 1, 2)
            x[:, i, j] = np.einsum("bcpq,dcpq->bd", patch, w)
    x = x.reshape(b, n * n, -1) + (p["conv1_bias"] if icfg.patch_bias else 0)  # timm's
    x = np.concatenate([np.broadcast_to(p["class_embedding"], (b, 1, x.shape[-1])), x], 1)
    x = x + p["positional_embedding"]
    eps, act = tower_eps_act(cfg, "image")
    if icfg.ln_pre:
        x = ln(x, p["ln_pre"], eps)
    x = transformer(x, p["transformer"]["resblocks"], icfg.heads, False, act, eps)
    if not icfg.final_ln_after_pool:
        x = ln(x, p["ln_post"], eps)
    pooled = x[:, 0] if icfg.pool_type == "tok" else x[:, 1:].mean(1)
    if icfg.final_ln_after_pool:
        pooled = ln(pooled, p["ln_post"], eps)
    return pooled @ p["proj"]


def tower_eps_act(cfg, tower):
    """The tower's own key if set, else the shared one."""
    m = cfg.model
    eps = m[tower].layernorm_eps if m[tower].layernorm_eps is not None else m.layernorm_eps
    act = m[tower].activation if m[tower].activation is not None else m.activation
    return eps, ACT[act]


def reference_text(params, tokens, cfg):
    p, tcfg = params["text"], cfg.model.text
    eps, act = tower_eps_act(cfg, "text")
    x = p["token_embedding"][tokens] + p["positional_embedding"]
    x = transformer(x, p["transformer"]["resblocks"], tcfg.heads, tcfg.causal, act, eps)
    if not tcfg.final_ln_after_pool:
        x = ln(x, p["ln_final"], eps)
    if tcfg.pool_type == "argmax":
        pooled = x[np.arange(len(tokens)), tokens.argmax(-1)]
    elif tcfg.pool_type == "last":
        pooled = x[:, -1]
    else:
        m = (tokens != 0)[..., None]
        pooled = (x * m).sum(1) / m.sum(1)
    if tcfg.final_ln_after_pool:
        pooled = ln(pooled, p["ln_final"], eps)
    return pooled @ p["text_projection"]


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_params(model, rng):
    """Replace every parameter by random values, so biases/LN params are exercised too."""
    params = nnx.to_pure_dict(nnx.state(model))
    return jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), params)


CASES = [
    dict(activation="gelu"),
    dict(activation="gelu_tanh", layernorm_eps=1e-5),
    {"activation": "quick_gelu", "image.pool_type": "avg", "image.ln_pre": False},
    {"text.causal": False, "text.pool_type": "last"},
    {"text.causal": False, "text.pool_type": "mean"},
    # per-tower options (the seeds' towers)
    {"image.activation": "gelu", "image.layernorm_eps": 1e-6, "image.ln_pre": False,
     "image.patch_bias": True, "text.activation": "quick_gelu", "text.layernorm_eps": 1e-5},
    {"image.pool_type": "avg", "image.final_ln_after_pool": True, "image.ln_pre": False,
     "text.activation": "gelu_tanh", "text.causal": False, "text.pool_type": "mean",
     "text.final_ln_after_pool": True},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_forward_matches_numpy_reference(case):
    cfg = tiny_config(**case)
    model = build_model(cfg, seed=0)
    graphdef = nnx.graphdef(model)
    rng = np.random.default_rng(1)
    params = random_params(model, rng)
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    tokens = np.array([[49, 3, 9, 48, 0, 0, 0], [49, 5, 48, 0, 0, 0, 0], [49, 1, 2, 3, 4, 5, 48]],
                      np.int32)
    img, txt, scale, bias = jax.jit(lambda p, i, t: nnx.merge(graphdef, p)(i, t))(
        params, images, tokens)
    p64 = jax.tree.map(np.float64, params)
    np.testing.assert_allclose(img, normalize(reference_image(p64, images.astype(np.float64), cfg)),
                               rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(txt, normalize(reference_text(p64, tokens, cfg)), rtol=2e-4,
                               atol=2e-5)
    assert float(scale) == pytest.approx(float(params["logit_scale"]))


def test_causal_text_ignores_later_tokens_and_pools_at_eot():
    cfg = tiny_config()
    model = build_model(cfg, seed=0)
    a = np.array([[49, 3, 9, 48, 0, 0, 0]], np.int32)
    b = np.array([[49, 3, 9, 48, 7, 7, 7]], np.int32)  # differs only after EOT
    np.testing.assert_allclose(model.encode_text(a), model.encode_text(b), rtol=1e-6, atol=1e-6)
    cfg.model.text.update(causal=False, pool_type="last")
    bidir = build_model(cfg, seed=0)
    assert not np.allclose(bidir.encode_text(a), bidir.encode_text(b), atol=1e-4)


def test_init_values_and_logical_axes():
    cfg = tiny_config(logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
                      **{"image.patch_bias": True})
    model = build_model(cfg, seed=0)
    assert float(model.logit_scale[...]) == pytest.approx(math.log(10.0))
    assert float(model.logit_bias[...]) == -10.0
    assert build_model(tiny_config(), seed=0).logit_bias is None
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == var.ndim, (path, axes, var.shape)


def test_same_seed_same_params_different_seed_differs():
    cfg = tiny_config()
    p0 = nnx.to_pure_dict(nnx.state(build_model(cfg, 0)))
    p0b = nnx.to_pure_dict(nnx.state(build_model(cfg, 0)))
    p1 = nnx.to_pure_dict(nnx.state(build_model(cfg, 1)))
    jax.tree.map(np.testing.assert_array_equal, p0, p0b)
    assert not np.allclose(p0["visual"]["proj"], p1["visual"]["proj"])


@pytest.mark.parametrize("bad", [{"activation": "relu"}, {"image.pool_type": "map"},
                                 {"text.pool_type": "first"}, {"dtype": "float64"},
                                 {"image.patch_size": 5}])
def test_bad_model_config_names_the_key(bad):
    with pytest.raises(ValueError, match="model|data.image_size"):
        build_model(tiny_config(**bad), seed=0)


def test_bfloat16_compute_is_close_to_float32():
    cfg = tiny_config()
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    f32 = build_model(cfg, 0).encode_image(images)
    cfg.model.dtype = "bfloat16"
    bf16 = build_model(cfg, 0)
    assert bf16.visual.conv1_kernel[...].dtype == jnp.float32  # params stay float32
    np.testing.assert_allclose(bf16.encode_image(images), f32, atol=5e-2)
