"""BatchNorm with PyTorch's `nn.BatchNorm2d` semantics, for the ResNet image tower.

Own module rather than `nnx.BatchNorm`, for two reasons:
- PyTorch normalises with the biased batch variance but moves `running_var` towards the
  *unbiased* one (n / (n - 1), n = rows x height x width); `nnx.BatchNorm` uses the biased one
  for both. The running statistics are what evaluation and a torchvision export compute with, so
  they must follow PyTorch's rule.
- Every parameter here declares its `param_kind` and `logical_axes` (models/layers.py), which
  the weight-decay mask and the sharding rules read.

`momentum` is PyTorch's (0.1: new = 0.9 * old + 0.1 * batch; flax's `momentum=0.9` is the same
rule). Statistics are computed in float32 whatever the compute dtype. Under a jitted SPMD step the
batch axis is sharded over the mesh's batch axes and the means below are global: XLA inserts the
all-reduce (a synchronised BatchNorm over the whole batch, not per device).

Train or eval mode is the module attribute `use_running_average` (nnx `Module.train()` /
`.eval()` set it): the model is built in eval mode, so whatever merges a graphdef with saved
params (evaluation, export, cluster embedding) uses the running statistics; the train step
uses a train-mode graphdef (train/state.py).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax.models.layers import const_param, read


class BatchNorm(nnx.Module):
    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.scale = const_param((channels,), ("embed",), 1.0, kind="norm")
        self.bias = const_param((channels,), ("embed",), 0.0, kind="norm")
        # Running statistics: model state, not parameters (no gradient, no optimizer moments,
        # no weight decay); the logical axes place them like the scale they go with.
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32), logical_axes=("embed",))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32), logical_axes=("embed",))
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = True

    def __call__(self, x):
        """x: (B, H, W, C) -> same shape and dtype, normalised over (B, H, W) per channel."""
        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = x32.mean(axes)
            var = jnp.square(x32 - mean).mean(axes)  # biased: what the batch is normalised by
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * read(self.scale) + read(self.bias)).astype(x.dtype)
