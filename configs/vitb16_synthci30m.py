"""SynthCLIP's recipe: ViT-B/16 + 12x512 text on SynthCI-30M, softmax (InfoNCE) loss.

From the SynthCLIP training script: batch 4096 (256 x 16 GPUs), AdamW betas (0.9, 0.98),
eps 1e-8, lr 5e-4, weight decay 0.5, 40 epochs of 30M pairs with 1 warmup epoch
(warmup from 1e-6, cosine down to 1e-5). Their augmentation is RandomResizedCrop(224,
scale=(0.5, 1)) with ImageNet mean/std.

  python -m synthclip_jax.main --config=configs/vitb16_synthci30m.py --workdir=gs://BUCKET/run \
      --config.data.train='gs://BUCKET/synthci30m/*.tfrecord'
"""
from synthclip_jax.config_base import IMAGENET_MEAN, IMAGENET_STD, base
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
    c.optim.update(b1=0.9, b2=0.98, eps=1e-8, lr_warmup_init=1e-6, lr_end=1e-5)
    c.model.embed_dim = 512
    c.model.image.update(vit_size("B/16"))
    c.model.text.update(text_size("B"))
    c.model.dtype = "bfloat16"  # params stay float32
    c.data.source = "tfrecord"
    c.data.train = "/data/synthci30m/*.tfrecord"
    c.data.image_size = 224
    c.data.rrc_scale = (0.5, 1.0)
    c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
    c.data.num_workers = 8
    c.checkpoint.every_steps = 2000
    c.log.every_steps = 100
    return c
