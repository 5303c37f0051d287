"""The optimizer (clip + masked AdamW + non-finite skip) against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synthclip_jax.config.base import base
from synthclip_jax.models import layers
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.optimizer import make_optimizer, make_schedule, weight_decay_mask


def numpy_step(p, g, m, v, t, lr, o, wd, mask, clip):
    """Clip by the global norm, then AdamW (decoupled decay on masked leaves), step t >= 1."""
    norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
    scale = min(1.0, clip / norm) if clip > 0 else 1.0
    out = {}
    for k in p:
        gk = g[k] * scale
        m[k] = o.b1 * m[k] + (1 - o.b1) * gk
        v[k] = o.b2 * v[k] + (1 - o.b2) * gk * gk
        mhat, vhat = m[k] / (1 - o.b1 ** t), v[k] / (1 - o.b2 ** t)
        out[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + o.eps) + wd * mask[k] * p[k])
    return out, norm


def test_matches_numpy_adamw_with_clipping_and_skips_nonfinite():
    config = base()
    config.lr, config.total_steps, config.warmup_steps = 1e-2, 100, 2
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
    mask = {"w": 1.0, "bias": 0.0}  # biases are not decayed
    opt = make_optimizer(config, {"w": True, "bias": False})
    apply = jax.jit(opt.apply)
    state = opt.init(params)
    ours = jax.tree.map(jnp.asarray, params)
    ref = dict(params)
    m = {k: np.zeros_like(x) for k, x in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    schedule = make_schedule(config)
    t = 0
    for gscale in (10.0, 0.01, np.nan, 3.0):  # clipped, not clipped, skipped, clipped
        grads = {k: (gscale * rng.normal(size=x.shape)).astype(np.float32)
                 for k, x in params.items()}
        before = ours
        ours, state, norm = apply(ours, grads, state)
        if np.isnan(gscale):
            assert not np.isfinite(float(norm))
            assert int(state.nonfinite_in_a_row) == 1 and int(state.nonfinite_total) == 1
            for k in ref:  # nothing moved
                np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(before[k]))
            continue
        lr = float(schedule(t))  # the skipped step did not advance AdamW's count
        t += 1
        ref, ref_norm = numpy_step(ref, grads, m, v, t, lr, config.optim, config.weight_decay,
                                   mask, config.optim.grad_clip_norm)
        np.testing.assert_allclose(float(norm), ref_norm, rtol=1e-5)
        for k in ref:
            np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-5, atol=1e-6)
    assert int(state.nonfinite_in_a_row) == 0 and int(state.nonfinite_total) == 1


# ---- which parameters each weight-decay policy decays ------------------------------------
def tiny_model_param_state():
    c = base()
    c.data.image_size = 16
    c.model.embed_dim, c.model.logit_bias_init = 8, -10.0
    c.model.image.update(width=16, depth=2, heads=2, patch_size=4, patch_bias=True)
    c.model.text.update(width=16, depth=2, heads=2, context_length=7, vocab_size=50)
    return nnx.state(nnx.eval_shape(lambda: build_model(c, 0)), nnx.Param)


def decayed_paths(policy):
    mask = weight_decay_mask(tiny_model_param_state(), policy)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return {"/".join(str(k.key) for k in path) for path, decays in flat if decays}


BLOCKS = tuple("transformer/resblocks/" + name
          for name in ("in_proj_kernel", "out_proj_kernel", "c_fc_kernel", "c_proj_kernel"))
WEIGHTS = {f"{tower}/{name}" for tower in ("visual", "text") for name in BLOCKS} | {
    "visual/conv1_kernel", "visual/proj", "text/token_embedding", "text/text_projection"}
EMBEDDINGS = {"visual/class_embedding", "visual/positional_embedding", "text/positional_embedding"}
BIASES = {f"{tower}/transformer/resblocks/{name}" for tower in ("visual", "text")
          for name in ("in_proj_bias", "out_proj_bias", "c_fc_bias", "c_proj_bias")} | {
    "visual/conv1_bias"}  # timm's patch_embed.proj.bias: SynthCLIP spares "bias" names
NORMS = {f"{tower}/{ln}/{p}" for tower, ln in (
    ("visual", "ln_pre"), ("visual", "ln_post"), ("text", "ln_final"),
    *((tower, f"transformer/resblocks/{ln}") for tower in ("visual", "text")
      for ln in ("ln_1", "ln_2"))) for p in ("scale", "bias")}
SCALARS = {"logit_scale", "logit_bias"}


@pytest.mark.parametrize("policy,expected", [
    ("openclip", WEIGHTS),
    ("synthclip", WEIGHTS | EMBEDDINGS),
    ("all", WEIGHTS | EMBEDDINGS | BIASES | NORMS | SCALARS),
])
def test_policy_decays_exactly_these_parameters(policy, expected):
    assert decayed_paths(policy) == expected


def test_every_parameter_is_in_one_expected_group():
    all_paths = decayed_paths("all")
    groups = (WEIGHTS, EMBEDDINGS, BIASES, NORMS, SCALARS)
    assert sum(map(len, groups)) == len(all_paths)


def test_parameter_without_kind_fails_clearly():
    class Stray(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((2, 2)), logical_axes=(None, None))

    with pytest.raises(ValueError, match="parameter w declares no param_kind"):
        weight_decay_mask(nnx.state(Stray(), nnx.Param), "openclip")
    with pytest.raises(ValueError, match="param_kind='kernel'; declare one of"):
        layers.const_param((2,), (None,), 0.0, kind="kernel")
    with pytest.raises(ValueError, match="weight_decay_policy='simclip'; choose one of"):
        weight_decay_mask(tiny_model_param_state(), "simclip")
