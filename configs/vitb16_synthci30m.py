"""SynthCLIP's model and recipe: ViT-B/16 + 12x512 text on SynthCI-30M, softmax (InfoNCE) loss.

The model is SynthCLIP's `CLIP_VITB16` exactly:
- image: timm `vit_base_patch16_224` (class token, no ln_pre, a bias on the patch embedding,
  LayerNorm eps 1e-6, exact GELU, class token taken after the final norm), then a bias-free
  768x512 projection;
- text: OpenAI CLIP's transformer (width 512, 8 heads, 12 layers, causal, QuickGELU, LayerNorm
  eps 1e-5 in float32, EOT (argmax) pooling, bias-free 512x512 projection);
- logit scale initialised to ln(1/0.07), clamped to [0, ln 100] after every step.

From the SynthCLIP training script: batch 4096 (256 x 16 GPUs), AdamW betas (0.9, 0.98),
eps 1e-8, lr 5e-4, weight decay 0.5 on params with ndim >= 2 whose names hold none of
bias/ln/bn (so timm's pos_embed and cls_token are decayed: policy "synthclip"), no gradient
clipping, 40 epochs of 30M pairs with 1 warmup epoch (per-iteration, from 1e-6, then cosine down
to 1e-5). Their augmentation is RandomResizedCrop(224, scale=(0.5, 1)) with ImageNet mean/std.
Zero-shot evaluation uses their 7 ImageNet templates (`synthclip_imagenet`).

Where we deliberately differ:
- Tokenizer: a caption longer than 77 tokens keeps its EOT (OpenCLIP's behaviour); SynthCLIP's
  `tokens[:77]` drops it, and its argmax pooling then reads the highest token id instead.
- Precision: bfloat16 compute with float32 params and float32 LayerNorm; SynthCLIP runs
  float16 autocast with a GradScaler (no loss scale needed in bfloat16).
- Data order and augmentation randomness come from our seeded Grain pipeline, not
  `seed + rank` torch loaders; the global batch is the same.
- The OpenCLIP export goes through OpenCLIP's timm image tower (exact GELU beside a QuickGELU
  text tower cannot be two native towers).

  python -m synthclip_jax.main --config=configs/vitb16_synthci30m.py --workdir=gs://BUCKET/run \
      --config.data.train='gs://BUCKET/synthci30m/*.tfrecord'
"""
from synthclip_jax.config.base import IMAGENET_MEAN, IMAGENET_STD, base
from synthclip_jax.models.sizes import text_size, vit_size

EXAMPLES = 30_000_000
BATCH = 4096
EPOCH_STEPS = EXAMPLES // BATCH  # 7324


def get_config():
    c = base()
    c.batch_size = BATCH
    c.total_steps = 40 * EPOCH_STEPS
    c.warmup_steps = EPOCH_STEPS
    c.lr = 5e-4
    c.weight_decay = 0.5
    c.optim.weight_decay_policy = "synthclip"  # also decays positional and class embeddings
    c.optim.update(b1=0.9, b2=0.98, eps=1e-8, lr_warmup_init=1e-6, lr_end=1e-5,
                   grad_clip_norm=0.0)  # SynthCLIP does not clip gradients
    c.model.embed_dim = 512
    # timm vit_base_patch16_224
    c.model.image.update(vit_size("B/16"), ln_pre=False, patch_bias=True, layernorm_eps=1e-6,
                         activation="gelu", pool_type="tok")
    # OpenAI CLIP text transformer
    c.model.text.update(text_size("B"), layernorm_eps=1e-5, activation="quick_gelu",
                        causal=True, pool_type="argmax")
    c.model.dtype = "bfloat16"  # params stay float32
    # No rematerialisation (remat=False, remat_policy "auto" = none under data parallelism): the
    # seed's 256 images per device fit a 32 GB device without it (27.6 GiB per v4 chip of 30.75
    # usable, tools/bench/RESULTS.md, issue 28), and it costs no recomputed FLOPs.
    c.data.source = "tfrecord"
    c.data.train = "/data/synthci30m/*.tfrecord"
    c.data.image_size = 224
    c.data.rrc_scale = (0.5, 1.0)
    c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
    c.data.num_workers = 8
    c.eval.templates = "synthclip_imagenet"
    c.checkpoint.every_steps = 2000
    c.log.every_steps = 100
    return c
