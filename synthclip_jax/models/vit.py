"""ViT image tower, laid out as OpenCLIP's native `VisionTransformer`.

patches (+ bias if `patch_bias`, as timm's patch_embed) -> [CLS] + patches + positional
embedding -> (ln_pre) -> pre-LN transformer -> ln_post -> pool ('tok': CLS token; 'avg': mean of
patch tokens, CLS still attended, as OpenCLIP `pool_type='avg'`) -> projection (no bias).
`final_ln_after_pool` moves ln_post after the pooling (OpenCLIP's flag; CLIPA/CLIPS avg pool);
with 'tok' pooling the two orders compute the same function.

Without ln_pre, with the patch bias and 'tok' pooling this is timm's `VisionTransformer`
(SynthCLIP's `vit_base_patch16_224`); with ln_pre and no patch bias, OpenCLIP's native ViT.
"""
import jax.numpy as jnp
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.config.choices import IMAGE_POOL_TYPES as POOL_TYPES
from synthclip_jax.models import layers
from synthclip_jax.models.patch_dropout import keep_patches


class VisionTransformer(nnx.Module):
    def __init__(self, cfg, *, image_size, embed_dim, eps, act, dtype, remat, rngs: nnx.Rngs,
                 attention="xla"):
        """`cfg`: model.image; `eps`, `act`: this tower's (models/tower_config.py)."""
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
        # .get: a workdir's config.json from before the key has no such key (and no bias)
        self.conv1_bias = (layers.const_param((width,), ("embed",), 0.0, kind="bias")
                           if cfg.get("patch_bias", False) else None)
        self.class_embedding = layers.normal_param(rngs, (width,), ("embed",), scale,
                                                   kind="embedding")
        self.positional_embedding = layers.normal_param(
            rngs, (num_patches + 1, width), (None, "embed"), scale, kind="embedding")
        self.ln_pre = layers.LayerNorm(width, eps) if cfg.ln_pre else None
        self.transformer = layers.Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, eps=eps, act=act, dtype=dtype, remat=remat,
            rngs=rngs, attention=attention)
        self.ln_post = layers.LayerNorm(width, eps)
        self.proj = layers.normal_param(rngs, (width, embed_dim), ("embed", None), scale,
                                        kind="weight")
        self.patch_size = patch
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.get("final_ln_after_pool", False)
        self.dtype = dtype

    def __call__(self, images, patch_keep=None):
        """images: (B, H, W, 3) float, already normalised -> (B, embed_dim) unnormalised."""
        return self.pool(self.tokens(images, patch_keep))

    def tokens(self, images, patch_keep=None):
        """The output tokens, (B, 1 + patches, width) after ln_post: what `pool` reads, and the
        CLIPS captioner's image prefix. `patch_keep` (B, K) (training with patch dropout,
        models/patch_dropout.py): only those patches, after the positional embedding."""
        b, h, w, c = images.shape
        p = self.patch_size
        # A strided conv with kernel == stride is a matmul over non-overlapping patches.
        weight = lambda param: layers.read(param, self.dtype)
        patches = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
        x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, weight(self.conv1_kernel))
        if self.conv1_bias is not None:
            x = x + weight(self.conv1_bias)
        x = x.reshape(b, -1, x.shape[-1])
        cls = jnp.broadcast_to(weight(self.class_embedding), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + weight(self.positional_embedding)
        if patch_keep is not None:
            x = keep_patches(x, patch_keep)
        x = sharding.constrain(x, ("batch", "seq", "embed"))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        x = self.transformer(x, causal=False)
        # final_ln_after_pool: the norm follows the pooling (in `pool`)
        return x if self.final_ln_after_pool else self.ln_post(x)

    def pool(self, x):
        """Output tokens -> (B, embed_dim) unnormalised."""
        pooled = x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(axis=1)
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        return sharding.constrain(pooled @ layers.read(self.proj, self.dtype), ("batch", None))
