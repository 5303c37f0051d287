"""SimCLIP's fine-tuning recipe on HF CLIP ViT-B/32's architecture (`openai/clip-vit-base-patch32`).

The model is HF `CLIPModel`'s ViT-B/32 exactly: image ViT-B/32 (width 768, 12 layers, ln_pre
(`pre_layrnorm`), class token through `post_layernorm`), text 12x512 causal with EOS pooling, both
towers QuickGELU and LayerNorm eps 1e-5, bias-free projections to 512.

Optimisation as SimCLIP's `models/wrapper.py` fine-tuning: AdamW betas (0.9, 0.98), eps 1e-6,
weight decay 0.1 on **all** parameters (policy "all"), lr 1e-5 with a 200-step linear warmup
(`GradualWarmupScheduler(multiplier=1, total_epoch=200)`, stepped per iteration) then constant,
no gradient clipping, logit scale clamped to [-ln 100, ln 100] after every step. Batch 1024,
20 epochs x 116 iterations (the README's COCO run). Train augmentation: RandomResizedCrop
scale (0.8, 1.0) with CLIP mean/std.

Where we differ:
- SimCLIP fine-tunes the pretrained openai/clip-vit-base-patch32; loading those weights is the
  weight import's job (`tools.import_weights --format hf`, DESIGN.md), not this config's;
  without it the model starts from our random init.
- SimCLIP's warmup starts at lr 0 and reaches lr at step 200; optax's linear warmup matches.
- SimCLIP resizes to 512 before its crop and runs HF's feature extractor (resize + center crop
  224) after it; we crop the decoded image directly to 224.
- Similarity-cluster batches (SimCLIP's core) come from `data.batch_order` (a .npy written by
  `tools/similarity_order.py`); empty = the seeded shuffle.
- Tokenizer: OpenAI BPE with EOT kept on truncation, as HF's CLIPTokenizer.

  python -m synthclip_jax.main --config=configs/simclip_vitb32_finetune.py --workdir=DIR \
      --config.data.train='coco/*.tfrecord'
"""
import math

from synthclip_jax.config.base import base
from synthclip_jax.models.sizes import text_size, vit_size

BATCH = 1024
EPOCHS, STEPS_PER_EPOCH = 20, 116


def get_config():
    c = base()
    c.batch_size = BATCH
    c.total_steps = EPOCHS * STEPS_PER_EPOCH
    c.warmup_steps = 200
    c.lr = 1e-5
    c.weight_decay = 0.1
    c.optim.update(b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=0.0, lr_warmup_init=0.0,
                   lr_schedule="constant", weight_decay_policy="all")
    c.model.embed_dim = 512
    c.model.layernorm_eps = 1e-5  # HF CLIP: both towers
    c.model.activation = "quick_gelu"
    c.model.image.update(vit_size("B/32"), ln_pre=True, patch_bias=False, pool_type="tok")
    c.model.text.update(text_size("B"), context_length=77, vocab_size=49408, causal=True,
                        pool_type="argmax")
    c.model.logit_scale_min = -math.log(100.0)
    c.model.logit_scale_max = math.log(100.0)
    c.data.source = "tfrecord"
    c.data.train = "/data/coco/*.tfrecord"
    c.data.image_size = 224
    c.data.rrc_scale = (0.8, 1.0)
    c.data.num_workers = 8
    c.checkpoint.every_steps = STEPS_PER_EPOCH
    c.log.every_steps = 10
    return c
