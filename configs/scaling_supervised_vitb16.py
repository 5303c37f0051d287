"""The Scaling-laws seed's supervised ImageNet classifier (google-research/syn-rep-learn
`Scaling/supervised`): timm `vit_base_patch16_224` trained on real, synthetic (Stable Diffusion
from "Classnames", "CLIP Templates" or "IN-Captions" prompts at CFG 2.0 or 7.5) or mixed
ImageNet-class images at several dataset scales.

Stated by the seed (its eval code, models_vit.py; REFERENCE.md section 5.2), kept exactly:
- the model: ViT-B/16, patch bias, class token, no ln_pre, LayerNorm eps 1e-6, exact GELU,
  class-token pooling after the final norm, a 1000-class linear head with bias (the same
  parameters as its released state dicts: `tools.import_weights --format timm --timm-model
  vit_base_patch16_224` loads them);
- the evaluation: Resize 256, CenterCrop 224, Normalize(0.5, 0.5); top-1, top-5, mean CE
  (eval.classify; `python -m synthclip_jax.evaluate --classify imagenet=DIR`).

Chosen here (the seed ships no training code; these are DeiT-B's published ImageNet values,
the usual recipe for a ViT-B/16 trained from scratch, minus its heavy augmentation which this
codebase does not implement): batch 1024, AdamW (0.9, 0.999), lr 1e-3 (DeiT's 5e-4 x 1024/512),
weight decay 0.05 on weights only, 5 warmup epochs then cosine, label smoothing 0.1,
RandomResizedCrop scale (0.08, 1), gradient clipping 1.0, 300 epochs of data.subset_records (or
the whole set) images; Normalize(0.5, 0.5) in training as in the seed's evaluation.
No mixup/cutmix, RandAugment, random erasing, stochastic depth or repeated augmentation.

  python -m synthclip_jax.main --config=configs/scaling_supervised_vitb16.py --workdir=W \
      --config.data.train='/data/sd_classnames_cfg2/*.tfrecord' \
      --config.eval.classify=imagenet=/data/imagenet/val
"""
from synthclip_jax.config.base import base
from synthclip_jax.models.sizes import vit_size

EXAMPLES = 1_281_167  # ImageNet-1k's train size; a sweep sets data.subset_records per scale
BATCH = 1024
EPOCHS = 300


def get_config():
    c = base()
    c.train.task = "classify"
    c.model.num_classes = 1000
    c.model.image.update(vit_size("B/16"), ln_pre=False, patch_bias=True, pool_type="tok")
    c.model.layernorm_eps, c.model.activation = 1e-6, "gelu"
    c.model.dtype = "bfloat16"  # params stay float32
    c.loss.label_smoothing = 0.1
    c.batch_size = BATCH
    epoch = EXAMPLES // BATCH
    c.total_steps = EPOCHS * epoch
    c.warmup_steps = 5 * epoch
    c.lr = 1e-3
    c.weight_decay = 0.05
    c.optim.update(b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0, lr_end=1e-5)
    c.data.train = "/data/imagenet_synthetic/*.tfrecord"
    c.data.image_size = 224
    c.data.rrc_scale = (0.08, 1.0)
    c.data.mean = c.data.std = (0.5, 0.5, 0.5)
    c.data.num_workers = 8
    c.eval.classify = "imagenet=/data/imagenet/val"
    c.eval.every_steps = 10 * epoch
    c.eval.batch_size = 256
    c.checkpoint.every_steps = 2000
    c.checkpoint.best_metric = "classify/imagenet/top1"
    c.log.every_steps = 100
    return c
