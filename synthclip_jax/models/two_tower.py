"""CLIP / SigLIP two-tower model and the one-to-one map of its parameters onto OpenCLIP.

Features are L2-normalised in float32. `logit_scale` is stored as a log (as OpenCLIP); the
SigLIP loss also uses `logit_bias`, created only when `model.logit_bias_init` is set.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from synthclip_jax.models import layers
from synthclip_jax.models.text import TextTransformer
from synthclip_jax.models.vit import VisionTransformer

# Our parameter paths (as in `nnx.to_pure_dict`, '/'-joined; `{t}` = 'visual' or 'text',
# `[i]` = row i of a stacked per-layer tensor) -> OpenCLIP `CLIP` state_dict keys, with the
# transform applied to our array. Text keys sit at the top level in OpenCLIP's native `CLIP`
# and under `text.` in `CustomTextCLIP`. D = width, H = heads, M = mlp dim.
OPENCLIP_KEYS = (
    ("visual/conv1_kernel", "visual.conv1.weight", "(p,p,3,D) -> transpose(3,2,0,1)"),
    ("visual/class_embedding", "visual.class_embedding", "identity"),
    ("visual/positional_embedding", "visual.positional_embedding", "identity (row 0 = CLS)"),
    ("visual/ln_pre/{scale,bias}", "visual.ln_pre.{weight,bias}", "identity"),
    ("visual/ln_post/{scale,bias}", "visual.ln_post.{weight,bias}", "identity"),
    ("visual/proj", "visual.proj", "identity (used as x @ W)"),
    ("text/token_embedding", "token_embedding.weight", "identity"),
    ("text/positional_embedding", "positional_embedding", "identity"),
    ("text/ln_final/{scale,bias}", "ln_final.{weight,bias}", "identity"),
    ("text/text_projection", "text_projection", "identity (used as x @ W)"),
    ("{t}/transformer/resblocks/ln_1/{scale,bias}[i]",
     "{t}.transformer.resblocks.i.ln_1.{weight,bias}", "identity"),
    ("{t}/transformer/resblocks/in_proj_kernel[i]", "{t}.transformer.resblocks.i.attn.in_proj_weight",
     "(D,3,H,Dh) -> reshape(D,3D).T"),
    ("{t}/transformer/resblocks/in_proj_bias[i]", "{t}.transformer.resblocks.i.attn.in_proj_bias",
     "(3,H,Dh) -> reshape(3D)"),
    ("{t}/transformer/resblocks/out_proj_kernel[i]",
     "{t}.transformer.resblocks.i.attn.out_proj.weight", "(H,Dh,D) -> reshape(D,D).T"),
    ("{t}/transformer/resblocks/out_proj_bias[i]", "{t}.transformer.resblocks.i.attn.out_proj.bias",
     "identity"),
    ("{t}/transformer/resblocks/ln_2/{scale,bias}[i]",
     "{t}.transformer.resblocks.i.ln_2.{weight,bias}", "identity"),
    ("{t}/transformer/resblocks/c_fc_kernel[i]", "{t}.transformer.resblocks.i.mlp.c_fc.weight", ".T"),
    ("{t}/transformer/resblocks/c_fc_bias[i]", "{t}.transformer.resblocks.i.mlp.c_fc.bias", "identity"),
    ("{t}/transformer/resblocks/c_proj_kernel[i]", "{t}.transformer.resblocks.i.mlp.c_proj.weight",
     ".T"),
    ("{t}/transformer/resblocks/c_proj_bias[i]", "{t}.transformer.resblocks.i.mlp.c_proj.bias",
     "identity"),
    ("logit_scale", "logit_scale", "identity (0-d, log scale)"),
    ("logit_bias", "logit_bias", "identity (0-d; needs init_logit_bias in OpenCLIP)"),
)
# (In OpenCLIP's `CLIP`, '{t}.transformer' is 'visual.transformer' or plain 'transformer'.)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def l2_normalize(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class TwoTower(nnx.Module):
    def __init__(self, cfg, *, image_size: int, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype={cfg.dtype!r}; choose one of {sorted(DTYPES)}")
        common = dict(embed_dim=cfg.embed_dim, eps=cfg.layernorm_eps,
                      act=layers.activation(cfg.activation), dtype=DTYPES[cfg.dtype],
                      remat=cfg.remat, rngs=rngs)
        self.visual = VisionTransformer(cfg.image, image_size=image_size, **common)
        self.text = TextTransformer(cfg.text, **common)
        self.logit_scale = layers.const_param((), (), cfg.logit_scale_init)
        self.logit_bias = (None if cfg.logit_bias_init is None
                           else layers.const_param((), (), cfg.logit_bias_init))

    def encode_image(self, images):
        return l2_normalize(self.visual(images))

    def encode_text(self, tokens):
        return l2_normalize(self.text(tokens))

    def __call__(self, images, tokens):
        """-> (image_features, text_features, logit_scale (log), logit_bias or 0)."""
        bias = jnp.zeros((), jnp.float32) if self.logit_bias is None else self.logit_bias[...]
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale[...], bias


def build_model(config, seed: int) -> TwoTower:
    """The model of a config (`config.model`, image size from `config.data.image_size`)."""
    return TwoTower(config.model, image_size=config.data.image_size, rngs=nnx.Rngs(params=seed))
