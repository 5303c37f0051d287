"""The Scaling-laws seed's CLIP models (google-research/syn-rep-learn `Scaling/clip`): open_clip
ViT-B-16 with QuickGELU (`force_quick_gelu=True`), trained on LAION-400M subsets of several
scales (real, synthetic from Stable Diffusion at CFG 1.5, or both), released as raw
`model.state_dict()` files. This config describes that model, so such a file imports with

  python -m tools.import_weights --format openclip --src CKPT.pt \
      --config configs/scaling_clip_vitb16.py --out W

(every key used, as the seed's strict load) and is evaluated as the seed does (OpenAI's 80
ImageNet templates, Resize 224 bicubic + CenterCrop, OpenAI mean/std; top-1 and the mean
cross-entropy of logit_scale * logits, reported as zeroshot/NAME/ce):

  python -m synthclip_jax.evaluate --workdir W --zeroshot imagenet=/data/imagenet/val

open_clip's ViT-B-16 is the native CLIP: ln_pre, no patch bias, LayerNorm eps 1e-5 (torch's
default: the config has no norm_kwargs), QuickGELU in both towers, embed 512, text 512x12,
8 heads, context 77. Training values (batch, schedule) are open_clip's LAION defaults as far as
the seed states them not; they matter only for training this config from scratch.
"""
from synthclip_jax.config.base import base
from synthclip_jax.models.sizes import text_size, vit_size


def get_config():
    c = base()
    c.model.embed_dim = 512
    c.model.layernorm_eps, c.model.activation = 1e-5, "quick_gelu"
    c.model.image.update(vit_size("B/16"), ln_pre=True, patch_bias=False, pool_type="tok")
    c.model.text.update(text_size("B"), causal=True, pool_type="argmax", context_length=77)
    c.data.image_size = 224
    c.data.train = "/data/laion_subset/*.tfrecord"  # only for training it: a scale's shards
    c.eval.templates = "openai_imagenet"
    return c
