"""Projection heads (`model.projection`): 'linear', one matrix per tower (CLIP, the towers'
own `proj` / `text_projection`), or simple-clip's 'mlp', Linear(d, d) - ReLU - Linear(d,
embed_dim) without biases, d the tower's width. The mlp's first Linear is the tower's own
projection built square (d x d); its second is the head's `kernel` here, a weight (decayed by
the 'openclip' policy) with logical axes (None, None) as the towers' projection outputs.
OpenCLIP has no such head: export refuses it (export/openclip.py).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax.config.choices import PROJECTIONS
from synthclip_jax.models import layers


class MLPHead(nnx.Module):
    def __init__(self, width: int, embed_dim: int, rngs: nnx.Rngs):
        # torch nn.Linear's default init, as simple-clip's heads: U(+-1/sqrt(fan_in)); normal
        # with the same variance here.
        self.kernel = layers.normal_param(rngs, (width, embed_dim), (None, None),
                                          (3 * width) ** -0.5, kind="weight")

    def __call__(self, x):
        return jax.nn.relu(x) @ layers.read(self.kernel, x.dtype)


class _Linear:
    @staticmethod
    def tower_dim(width) -> dict:
        return {}

    @staticmethod
    def head(width, embed_dim, rngs):
        return None


class _MLP:
    @staticmethod
    def tower_dim(width) -> dict:
        return {"embed_dim": width}

    @staticmethod
    def head(width, embed_dim, rngs):
        return MLPHead(width, embed_dim, rngs)


def projection_heads(model_cfg):
    name = model_cfg.get("projection", "linear")  # configs saved before the key: linear
    if name not in PROJECTIONS:
        raise ValueError(f"model.projection={name!r}; choose one of {PROJECTIONS}")
    return _MLP if name == "mlp" else _Linear


def apply_head(head, features):
    return features if head is None else head(features).astype(jnp.float32)
