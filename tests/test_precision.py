"""Attention implementation switch, float32 islands in a bfloat16 step, remat policies by name,
bfloat16 Adam moments, and the config rules of those keys."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo_cpu
from synthclip_jax import sharding
from synthclip_jax.config.check import validate
from synthclip_jax.config.error import ConfigError
from synthclip_jax.models import layers
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tests.test_models import tiny_config


def walk(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (scan, jit, remat, shard_map,
    custom_vjp/jvp, cond branches)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)


def dtypes_of(eqn):
    return {str(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars) if hasattr(v.aval, "dtype")}


def step_jaxpr(loss="softmax", **model):
    c = tiny_config(dtype="bfloat16", **model)
    c.loss.name = loss
    if loss != "softmax":
        c.model.logit_bias_init = -10.0
    c.batch_size = 4
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    setup = make_train_setup(c, mesh)
    batch = {"image": jnp.zeros((4, 16, 16, 3), jnp.float32),
             "text": jnp.ones((4, 7), jnp.int32)}
    closed = jax.make_jaxpr(make_train_step(c, setup, mesh))(setup.abstract_state, batch)
    return closed, list(walk(closed.jaxpr))


@pytest.fixture(scope="module")
def bf16_step():
    return step_jaxpr()


def test_bf16_step_computes_the_towers_in_bf16(bf16_step):
    """The float32 checks below mean something only if the rest is bfloat16."""
    _, eqns = bf16_step
    matmuls = [e for e in eqns if e.primitive.name == "dot_general"]
    assert any(dtypes_of(e) == {"bfloat16"} for e in matmuls)


def test_layernorm_statistics_are_float32_in_a_bf16_step(bf16_step):
    _, eqns = bf16_step
    rsqrt = [e for e in eqns if e.primitive.name == "rsqrt"]
    # ln_pre, the scanned block's ln_1 and ln_2, ln_post (image); ln_1, ln_2, ln_final (text);
    # the two feature normalisations
    assert len(rsqrt) >= 9
    assert all(dtypes_of(e) == {"float32"} for e in rsqrt), [dtypes_of(e) for e in rsqrt]


def test_attention_softmax_statistics_are_float32_in_a_bf16_step(bf16_step):
    _, eqns = bf16_step
    # attention probabilities: (B, T, heads, ..., S) exp and max; the loss's are 2-D
    attention = [e for e in eqns if e.primitive.name in ("exp", "reduce_max")
                 and e.invars[0].aval.ndim >= 4]
    assert len(attention) >= 4  # 2 towers (one scanned block each) x (max, exp)
    assert all(dtypes_of(e) == {"float32"} for e in attention)


def test_logits_are_float32_in_a_bf16_step(bf16_step):
    _, eqns = bf16_step
    # the B x B image-text logits (B = 4; no tower matmul has a 4 x 4 output)
    logits = [e for e in eqns if e.primitive.name == "dot_general"
              and e.outvars[0].aval.shape == (4, 4)]
    assert logits
    assert all(dtypes_of(e) == {"float32"} for e in logits)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid_ring"])
def test_loss_is_float32_in_a_bf16_step(loss):
    closed, eqns = step_jaxpr(loss)
    logs = [e for e in eqns if e.primitive.name in ("log", "log1p", "logistic")]
    assert logs and all(dtypes_of(e) == {"float32"} for e in logs)
    metrics = closed.out_avals[-len(closed.out_avals):]
    assert any(a.shape == () and a.dtype == jnp.float32 for a in metrics)


# ---- the attention switch --------------------------------------------------------------------
def numpy_block(x, p, heads, causal, eps):
    """One pre-LN block (OpenCLIP's ResidualAttentionBlock), float64, exact GELU."""
    def ln(y, g):
        mu = y.mean(-1, keepdims=True)
        return (y - mu) / np.sqrt(((y - mu) ** 2).mean(-1, keepdims=True) + eps) * g["scale"] \
            + g["bias"]
    b, s, d = x.shape
    dh = d // heads
    qkv = np.einsum("bsd,dthk->tbhsk", ln(x, p["ln_1"]), p["in_proj_kernel"]) \
        + p["in_proj_bias"][:, None, :, None]
    q, k, v = qkv
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    if causal:
        logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    h = (attn @ v).transpose(0, 2, 1, 3)
    x = x + np.einsum("bshk,hkd->bsd", h, p["out_proj_kernel"]) + p["out_proj_bias"]
    h = ln(x, p["ln_2"]) @ p["c_fc_kernel"] + p["c_fc_bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return x + h @ p["c_proj_kernel"] + p["c_proj_bias"]


def abstract_blocks(attention):
    """(graphdef, abstract state) of one tiny block, built without running its initialisers."""
    return nnx.split(nnx.eval_shape(lambda: layers.StackedBlocks(
        16, 2, 32, 1, eps=1e-6, act=layers.ACTIVATIONS["gelu"], dtype=jnp.float32,
        rngs=nnx.Rngs(0), attention=attention)))


@pytest.mark.parametrize("impl", ["xla", "auto"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_xla_path_equals_the_numpy_block(impl, causal):
    graphdef, state = abstract_blocks(impl)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(0, 0.3, a.shape[1:]).astype(np.float32),
                          nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)  # one layer's slice, as the scan body gets it
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, causal))(state, x)
    ref = numpy_block(x.astype(np.float64), jax.tree.map(np.float64, params), 2, causal, 1e-6)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=2e-5)


def test_attention_switch_selects_what_it_says():
    assert layers.attention_impl("xla", jnp.bfloat16, 64) == "xla"
    assert layers.attention_impl("cudnn", jnp.float32, 64) == "cudnn"
    # auto: cuDNN only on a GPU with 16-bit inputs and a head size it supports
    gpu = jax.default_backend() == "gpu"
    assert layers.attention_impl("auto", jnp.bfloat16, 64) == ("cudnn" if gpu else "xla")
    assert layers.attention_impl("auto", jnp.float32, 64) == "xla"
    assert layers.attention_impl("auto", jnp.bfloat16, 256) == "xla"
    if gpu:
        return
    # On CPU, asking for cuDNN reaches jax.nn.dot_product_attention's cuDNN path, which refuses:
    # naming cuDNN without the CUDA plugin, by its own input checks with it (the `aot` extra).
    graphdef, state = abstract_blocks("cudnn")
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    x = jax.ShapeDtypeStruct((2, 8, 16), jnp.bfloat16)
    with pytest.raises((RuntimeError, NotImplementedError)) as refused:
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, False), state, x)
    assert "cuDNN" in str(refused.value) or any(
        "cudnn" in str(entry.path) for entry in refused.traceback), refused.value


# ---- remat policies --------------------------------------------------------------------------
def remat_eqns(config, devices):
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    batch = {"image": jnp.zeros((8, 16, 16, 3), jnp.float32),
             "text": jnp.ones((8, 7), jnp.int32)}
    closed = jax.make_jaxpr(make_train_step(config, setup, mesh))(setup.abstract_state, batch)
    return [e for e in walk(closed.jaxpr) if e.primitive.name in ("checkpoint", "remat", "remat2")
            and e.params.get("policy") is not layers.RECOMPUTE]  # the per-layer ones


def policy_name(eqn):
    return str(eqn.params.get("policy"))


@pytest.mark.parametrize("remat,policy,fsdp,expected", [
    (False, "auto", 1, None), (True, "auto", 1, "full"), (False, "auto", 8, "dots"),
    (False, "none", 8, None), (False, "dots", 1, "dots"), (False, "full", 8, "full"),
    (True, "none", 1, None)])
def test_remat_policy_by_name(remat, policy, fsdp, expected):
    c = tiny_config(remat=remat, remat_policy=policy)
    c.batch_size = 8
    c.mesh.update(data=1 if fsdp > 1 else -1, fsdp=fsdp)
    found = remat_eqns(c, jax.devices()[:fsdp])
    if expected is None:
        assert not found
        return
    assert found
    names = {policy_name(e) for e in found}
    if expected == "full":
        assert names == {"None"}, names
    else:
        assert names == {str(jax.checkpoint_policies.dots_with_no_batch_dims_saveable)}, names


# ---- bf16 Adam moments -----------------------------------------------------------------------
def test_mu_dtype_bfloat16_stores_the_first_moment_in_bf16():
    c = tiny_config()
    c.optim.mu_dtype = "bfloat16"
    c.batch_size = 4
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    setup = make_train_setup(c, mesh)
    adam = setup.abstract_state["opt_state"].adamw
    mu = [s for s in jax.tree.leaves(adam) if s.dtype == jnp.bfloat16]
    params = jax.tree.leaves(setup.abstract_state["params"])
    assert len(mu) == len(params)  # mu in bf16; nu and the params stay float32
    assert all(p.dtype == jnp.float32 for p in params)
    batch = {"image": jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32),
             "text": jax.ShapeDtypeStruct((4, 7), jnp.int32)}
    state, _ = jax.eval_shape(make_train_step(c, setup, mesh), setup.abstract_state, batch)
    assert jax.tree.map(lambda a: a.dtype, state) == jax.tree.map(lambda a: a.dtype,
                                                                   setup.abstract_state)


# ---- config rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("key,bad", [("model.attention_impl", "flash"),
                                     ("model.remat_policy", "some"),
                                     ("optim.mu_dtype", "float16")])
def test_new_keys_are_checked(key, bad):
    config = demo_cpu.get_config()
    group, leaf = key.split(".")
    config[group][leaf] = bad
    with pytest.raises(ConfigError) as raised:
        validate(config, check_paths=False)
    assert raised.value.key == key and "\n" not in str(raised.value)
