"""Transformer pieces shared by the image and text towers.

Every parameter is one `nnx.Param` whose shape maps onto exactly one OpenCLIP tensor (see the
rule tables in `synthclip_jax/export/openclip.py`), whose `logical_axes` metadata names each
dimension, so that `sharding.py` can place it on the mesh by rules from the config, and whose
`param_kind` metadata (see `param_kinds.py`) decides whether weight decay applies to it.

The residual blocks of a tower are stored stacked (leading 'layers' axis) and run with
`jax.lax.scan`: compile time stays flat in depth, and `jax.checkpoint` on the scanned body gives
per-layer rematerialisation as a config switch.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.config.choices import ATTENTION_IMPLS, REMAT_POLICIES
from synthclip_jax.models.param_kinds import PARAM_KINDS

# The policy of the small recomputations inside every layer (LayerNorm, activation, attention
# softmax: recomputed from their inputs in the backward pass whatever model.remat_policy says);
# named so that they can be told from the per-layer policies.
RECOMPUTE = jax.checkpoint_policies.nothing_saveable

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # PyTorch nn.GELU()
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # Flax / big_vision
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
}


def attention_impl(name: str, dtype, head_dim: int) -> str:
    """model.attention_impl -> jax.nn.dot_product_attention's `implementation`. "auto": cuDNN's
    fused (flash) kernel where it applies (GPU, 16-bit inputs, head_dim a multiple of 8 up to
    128), else XLA. (JAX's own `None` means XLA for now.)"""
    if name != "auto":
        return name
    fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 \
        and head_dim <= 128
    return "cudnn" if fits and jax.default_backend() == "gpu" else "xla"


def remat_policy(remat, policy: str = "auto"):
    """(model.remat, model.remat_policy) -> "none" | "dots" | "full", or None: decided per layout
    in `Transformer` ("dots" where FSDP gathers weights, else none). "auto" keeps model.remat's
    meaning (True: "full"; False: None)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy={policy!r}; choose one of {REMAT_POLICIES}")
    if policy != "auto":
        return policy
    if remat in REMAT_POLICIES[1:]:  # already resolved
        return remat
    return "full" if remat else None


def _param(value, axes, kind: str) -> nnx.Param:
    assert value.ndim == len(axes), (value.shape, axes)
    if kind not in PARAM_KINDS:
        raise ValueError(f"param_kind={kind!r}; declare one of {PARAM_KINDS}")
    return nnx.Param(value, logical_axes=tuple(axes), param_kind=kind)


def normal_param(rngs: nnx.Rngs, shape, axes, std: float, *, kind: str) -> nnx.Param:
    return _param(std * jax.random.normal(rngs.params(), shape, jnp.float32), axes, kind)


def const_param(shape, axes, value: float, *, kind: str) -> nnx.Param:
    return _param(jnp.full(shape, value, jnp.float32), axes, kind)


def read(param: nnx.Param, dtype=jnp.float32):
    """A parameter's value for compute: cast (before the FSDP gather, so it moves `dtype` bytes),
    then laid out for compute by its logical axes (see `sharding.constrain`). Inside the scanned
    blocks a parameter is one layer's slice: its leading 'layers' axes are gone."""
    value = param[...].astype(dtype)
    axes = param.get_metadata()["logical_axes"]
    return sharding.constrain(value, axes[len(axes) - value.ndim:])


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype (as OpenCLIP's LayerNormFp32)."""

    def __init__(self, width: int, eps: float, stack: tuple = ()):
        lead = ("layers",) * len(stack)
        self.scale = const_param((*stack, width), (*lead, "embed"), 1.0, kind="norm")
        self.bias = const_param((*stack, width), (*lead, "embed"), 0.0, kind="norm")
        self.eps = eps

    def __call__(self, x):
        return _layer_norm(x, read(self.scale), read(self.bias), self.eps)


# Recomputed in the backward pass from its (compute-dtype) input: otherwise autodiff keeps three
# float32 copies of the activation per norm (x - mean, the normalised y, y * scale), 12 bytes per
# element against the input's 2 in bfloat16, the largest single part of what a ViT-B/16 layer
# kept per image without remat (issue 28). The recomputation is a few elementwise ops, fused into
# the backward kernels, and gives bit-identical values.
@functools.partial(jax.checkpoint, static_argnums=(3,), policy=RECOMPUTE)
def _layer_norm(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale + bias).astype(x.dtype)


@functools.cache
def recomputed(act):
    """`act` under the RECOMPUTE policy: one wrapper per activation function, so that models
    built apart have equal graphdefs (the activation is a static attribute of the module)."""
    return jax.checkpoint(act, policy=RECOMPUTE)


class StackedBlocks(nnx.Module):
    """All of a tower's pre-LN blocks, x + attn(ln_1(x)); x + mlp(ln_2(x)), stored stacked
    (leading 'layers' axis) and called one layer at a time, with that layer's slice.

    q/k/v live in one kernel (width, 3, heads, head_dim): OpenCLIP packs them the same way
    (`in_proj_weight`), and the heads axis is what tensor parallelism shards.
    """

    def __init__(self, width, heads, mlp_dim, depth, *, eps, act, dtype, rngs: nnx.Rngs,
                 attention="xla"):
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention_impl={attention!r}; choose one of "
                             f"{ATTENTION_IMPLS}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        head_dim = width // heads
        L = ("layers",)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        self.ln_1 = LayerNorm(width, eps, stack=(depth,))
        self.in_proj_kernel = normal_param(
            rngs, (depth, width, 3, heads, head_dim), (*L, "embed", None, "heads", "kv"), attn_std,
            kind="weight")
        self.in_proj_bias = const_param((depth, 3, heads, head_dim), (*L, None, "heads", "kv"), 0.0,
                                        kind="bias")
        self.out_proj_kernel = normal_param(
            rngs, (depth, heads, head_dim, width), (*L, "heads", "kv", "embed"), proj_std,
            kind="weight")
        self.out_proj_bias = const_param((depth, width), (*L, "embed"), 0.0, kind="bias")
        self.ln_2 = LayerNorm(width, eps, stack=(depth,))
        self.c_fc_kernel = normal_param(rngs, (depth, width, mlp_dim), (*L, "embed", "mlp"), fc_std,
                                        kind="weight")
        self.c_fc_bias = const_param((depth, mlp_dim), (*L, "mlp"), 0.0, kind="bias")
        self.c_proj_kernel = normal_param(rngs, (depth, mlp_dim, width), (*L, "mlp", "embed"),
                                          proj_std, kind="weight")
        self.c_proj_bias = const_param((depth, width), (*L, "embed"), 0.0, kind="bias")
        # The activation is recomputed in the backward pass from its input: exact GELU's
        # derivative otherwise keeps erfc, exp and two more (batch, seq, mlp) tensors per layer.
        self.act = recomputed(act)
        self.dtype = dtype
        self.attention = attention

    def __call__(self, x, causal: bool, mask=None):
        w = lambda p: read(p, self.dtype)
        residual = lambda y: sharding.constrain(y, ("batch", "seq", "embed"))
        x = residual(x)
        h = self.ln_1(x)
        qkv = jnp.einsum("bsd,dthk->tbshk", h, w(self.in_proj_kernel)) + w(
            self.in_proj_bias)[:, None, None]
        q, k, v = sharding.constrain(qkv, (None, "batch", "seq", "heads", "kv"))
        impl = attention_impl(self.attention, q.dtype, q.shape[-1])
        attend = functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                   implementation=impl)
        if impl == "xla":
            # Recompute the scores and softmax in the backward pass from q, k, v (what a flash
            # kernel such as cuDNN's keeps) instead of keeping the float32 exp and the
            # probabilities, (batch, heads, seq, seq) x 6 bytes per layer: for ViT-B/16 more
            # than q, k and v together. One more QK^T matmul, a few % of a ViT's FLOPs.
            attend = jax.checkpoint(attend, policy=RECOMPUTE)
        h = attend(q, k, v, mask=mask)
        h = sharding.constrain(h, ("batch", "seq", "heads", "kv"))
        x = residual(x + jnp.einsum("bshk,hkd->bsd", h, w(self.out_proj_kernel))
                     + w(self.out_proj_bias))
        h = self.ln_2(x)
        h = self.act(h @ w(self.c_fc_kernel) + w(self.c_fc_bias))
        h = sharding.constrain(h, ("batch", "seq", "mlp"))
        return residual(x + h @ w(self.c_proj_kernel) + w(self.c_proj_bias))


class Transformer(nnx.Module):
    def __init__(self, width, depth, heads, mlp_ratio, *, eps, act, dtype, remat, rngs: nnx.Rngs,
                 attention="xla"):
        self.resblocks = StackedBlocks(
            width, heads, int(width * mlp_ratio), depth, eps=eps, act=act, dtype=dtype, rngs=rngs,
            attention=attention)
        self.remat = remat_policy(remat)

    def __call__(self, x, causal: bool, mask=None):
        """mask: None, or bool (S, S), True where query row i may attend to key column j (the
        CLIPS captioner's prefix/query mask), broadcast over batch and heads."""
        graphdef, stacked = nnx.split(self.resblocks)
        mask = None if mask is None else mask[None, None]

        def layer(x, layer_params):
            return nnx.merge(graphdef, layer_params)(x, causal, mask), None

        if self.remat == "full":
            layer = jax.checkpoint(layer, prevent_cse=False)
        elif self.remat == "dots" or (self.remat is None and sharding.gathers_weights()):
            # ZeRO-3: the backward pass gathers each layer's weights again instead of keeping
            # every layer's gathered copy alive (which would hold the whole model per device).
            # Saving only the weight matmuls' outputs is the policy under which XLA does so.
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            layer = jax.checkpoint(layer, prevent_cse=False, policy=policy)
        x, _ = jax.lax.scan(layer, x, stacked)
        return x
