"""ViT image tower, laid out as OpenCLIP's native `VisionTransformer`.

patches -> [CLS] + patches + positional embedding -> (ln_pre) -> pre-LN transformer -> ln_post
-> pool ('tok': CLS token; 'avg': mean of patch tokens, CLS still attended, as OpenCLIP
`pool_type='avg'`) -> projection (no bias). The patch embedding has no bias, as OpenCLIP's conv1.
"""
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.choices import IMAGE_POOL_TYPES as POOL_TYPES
from synthclip_jax.models import layers


class VisionTransformer(nnx.Module):
    def __init__(self, cfg, *, image_size, embed_dim, eps, act, dtype, remat, rngs: nnx.Rngs):
        width, patch = cfg.width, cfg.patch_size
        if image_size % patch:
            raise ValueError(f"data.image_size={image_size} is not divisible by "
                             f"model.image.patch_size={patch}")
        if cfg.pool_type not in POOL_TYPES:
            raise ValueError(f"model.image.pool_type={cfg.pool_type!r}; choose one of {POOL_TYPES}")
        num_patches = (image_size // patch) ** 2
        scale = width**-0.5
        self.conv1_kernel = layers.normal_param(
            rngs, (patch, patch, 3, width), (None, None, None, "embed"),
            (patch * patch * 3) ** -0.5, kind="weight")
        self.class_embedding = layers.normal_param(rngs, (width,), ("embed",), scale,
                                                   kind="embedding")
        self.positional_embedding = layers.normal_param(
            rngs, (num_patches + 1, width), (None, "embed"), scale, kind="embedding")
        self.ln_pre = layers.LayerNorm(width, eps) if cfg.ln_pre else None
        self.transformer = layers.Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, eps=eps, act=act, dtype=dtype, remat=remat,
            rngs=rngs)
        self.ln_post = layers.LayerNorm(width, eps)
        self.proj = layers.normal_param(rngs, (width, embed_dim), ("embed", None), scale,
                                        kind="weight")
        self.patch_size = patch
        self.pool_type = cfg.pool_type
        self.dtype = dtype

    def __call__(self, images):
        """images: (B, H, W, 3) float, already normalised -> (B, embed_dim) unnormalised."""
        return self.pool(self.tokens(images))

    def tokens(self, images):
        """The output tokens, (B, 1 + patches, width) after ln_post: what `pool` reads, and the
        CLIPS captioner's image prefix."""
        b, h, w, c = images.shape
        p = self.patch_size
        # A strided conv with kernel == stride is a matmul over non-overlapping patches.
        weight = lambda param: layers.read(param, self.dtype)
        patches = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
        x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, weight(self.conv1_kernel))
        x = x.reshape(b, -1, x.shape[-1])
        cls = jnp.broadcast_to(weight(self.class_embedding), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + weight(self.positional_embedding)
        x = sharding.constrain(x, ("batch", "seq", "embed"))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.ln_post(self.transformer(x, causal=False))

    def pool(self, x):
        """Output tokens -> (B, embed_dim) unnormalised."""
        pooled = x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(axis=1)
        return sharding.constrain(pooled @ layers.read(self.proj, self.dtype), ("batch", None))
