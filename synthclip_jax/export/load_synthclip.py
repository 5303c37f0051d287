"""SynthCLIP checkpoints (`hammoudhasan/SynthCLIP`, `Training/models.py: CLIP_VITB16`) -> ours.

SynthCLIP's trainer saves `{'epoch', 'state_dict', 'optimizer', 'scaler', 'best_acc1', 'args'}`
with DDP's `module.` prefix; `args` is an `argparse.Namespace` (allowlisted in
`torch_files.SAFE_TYPES`). The model: a timm `vit_base_patch16_224` image tower (`visual.*`:
cls_token, pos_embed, patch_embed.proj with bias, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}, norm; no ln_pre; LayerNorm eps 1e-6, exact GELU), an OpenAI text tower
(token_embedding, positional_embedding, transformer.resblocks.N.*, ln_final; QuickGELU,
eps 1e-5), `image_projection` (768, 512), `text_projection` (512, 512) and `logit_scale`.

The image tower's tensors are read through the timm ViT key table (`timm_vit.py`, via
`fit.take_timm`), the text tower's through OpenCLIP's (its keys are OpenAI's, as OpenCLIP's
native text tower), `image_projection` is our `visual/proj` (both `x @ W`). Without `--config`
the model config is read off the tensor shapes, with SynthCLIP's fixed choices: per-tower eps
and activation as above, no ln_pre, a patch bias, class-token pooling, causal argmax text, ImageNet
mean/std, and 64-wide attention heads (ViT-B/16: 12 heads; text 512: 8), the head width every
released CLIP_VITB16 has (OpenCLIP reads OpenAI state dicts the same way); other head counts
need `--config`.
"""
import math
import os
import re

from synthclip_jax.config.base import IMAGENET_MEAN, IMAGENET_STD
from synthclip_jax.export.torch_files import WeightsError, read_weights

# Keys only a SynthCLIP checkpoint has (OpenCLIP's native CLIP has visual.proj/conv1 instead).
MARKERS = ("image_projection", "visual.cls_token", "visual.patch_embed.proj.weight")
HEAD_WIDTH = 64  # CLIP_VITB16: 768 / 12 heads, 512 / 8 heads
GUESSED = ("model.image.heads", "model.text.heads")  # shapes cannot tell; --config may differ
TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight",
             "text_projection", "logit_scale")


def read_checkpoint(path) -> tuple:
    """(tensors with `module.` removed, the trainer's args dict) of a SynthCLIP checkpoint; a
    file that is not SynthCLIP's layout is refused naming what is missing."""
    tensors, args = read_weights(os.fspath(path))
    missing = [k for k in MARKERS + TEXT_KEYS if k not in tensors]
    if missing:
        raise WeightsError(f"{path}: not a SynthCLIP CLIP_VITB16 checkpoint: no {missing} "
                           f"(keys: {sorted(tensors)[:6]} ...)")
    return tensors, args


def is_synthclip(path) -> bool:
    tensors, _ = read_weights(os.fspath(path))
    return all(k in tensors for k in MARKERS)


def depth(tensors, prefix) -> int:
    return len({m.group(1) for k in tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def model_config(tensors, config):
    """`config` with SynthCLIP's model read off the tensor shapes (see the module docstring)."""
    m = config.model
    width = tensors["visual.cls_token"].shape[-1]
    patch = tensors["visual.patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(tensors["visual.pos_embed"].shape[1] - 1)
    text_width = tensors["token_embedding.weight"].shape[1]
    m.embed_dim = int(tensors["image_projection"].shape[1])
    m.layernorm_eps, m.activation = 1e-5, "quick_gelu"  # the OpenAI text tower's
    m.image.update(width=width, depth=depth(tensors, "visual.blocks."), heads=width // HEAD_WIDTH,
                   patch_size=patch, mlp_ratio=tensors["visual.blocks.0.mlp.fc1.weight"].shape[0]
                   / width, pool_type="tok", ln_pre=False, patch_bias=True,
                   layernorm_eps=1e-6, activation="gelu")  # timm's ViT
    m.text.update(width=text_width, depth=depth(tensors, "transformer.resblocks."),
                  heads=text_width // HEAD_WIDTH,
                  mlp_ratio=tensors["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
                  context_length=tensors["positional_embedding"].shape[0],
                  vocab_size=tensors["token_embedding.weight"].shape[0], causal=True,
                  pool_type="argmax")
    config.data.image_size = grid * patch
    config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
    return config


def read_source(src):
    """(tensors in the layout `fit.to_params` reads, names for messages, derive)."""
    tensors, _ = read_checkpoint(src)
    tensors["visual.proj"] = tensors.pop("image_projection")  # x @ W in both: unchanged
    derive_from = dict(tensors, image_projection=tensors["visual.proj"])
    return tensors, {"visual.proj": "image_projection"}, \
        lambda config: model_config(derive_from, config)
