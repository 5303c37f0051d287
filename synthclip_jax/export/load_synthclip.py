"""SynthCLIP checkpoints (`hammoudhasan/SynthCLIP`, `Training/models.py: CLIP_VITB16`) -> ours.

SynthCLIP's trainer saves `{'epoch', 'state_dict', 'optimizer', 'scaler', 'best_acc1', 'args'}`
with DDP's `module.` prefix; `args` is an `argparse.Namespace` (allowlisted in
`torch_files.SAFE_TYPES`). The model: a timm `vit_base_patch16_224` image tower (`visual.*`:
cls_token, pos_embed, patch_embed.proj with bias, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}, norm; no ln_pre; LayerNorm eps 1e-6, exact GELU), an OpenAI text tower
(token_embedding, positional_embedding, transformer.resblocks.N.*, ln_final; QuickGELU,
eps 1e-5), `image_projection` (768, 512), `text_projection` (512, 512) and `logit_scale`.

Reading and unwrapping the file is done here. Mapping the tensors onto our model needs a
LayerNorm eps and activation per tower (the towers differ) and the timm ViT key table:
until the model has them, `read_source` stops with a `WeightsError` that says so.
"""
import os

from synthclip_jax.export.torch_files import WeightsError, read_weights

# Keys only a SynthCLIP checkpoint has (OpenCLIP's native CLIP has visual.proj/conv1 instead).
MARKERS = ("image_projection", "visual.cls_token", "visual.patch_embed.proj.weight")
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
    try:
        tensors, _ = read_weights(os.fspath(path))
    except WeightsError:
        raise
    return all(k in tensors for k in MARKERS)


def read_source(src):
    tensors, args = read_checkpoint(src)
    raise WeightsError(
        f"{src}: a SynthCLIP checkpoint (model {args.get('model', '?')!r}, "
        f"{len(tensors)} tensors) was read, but mapping it needs per-tower LayerNorm eps and "
        "activation (timm image tower: 1e-6, exact GELU; OpenAI text tower: 1e-5, QuickGELU), "
        "which the model config does not have yet")
