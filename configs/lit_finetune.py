"""LiT fine-tuning (locked-image tuning, Zhai et al. 2022; big_vision
`configs/proj/image_text/README_lit.md`): a pretrained image tower stays locked, the text tower
learns to read it. Here on an imported OpenCLIP ViT-B/16 (laion2b / openai weights), the most
common way to adapt a released CLIP to one's own image-caption pairs.

  python -m tools.import_weights --format openclip --src OPENCLIP_DIR --out imported/
  python -m synthclip_jax.main --config=configs/lit_finetune.py --workdir=DIR \\
      --config.init_from=imported/ --config.data.train='pairs/*.tfrecord'

All values are chosen, not taken from a paper: the image tower locked except its projection
(train.lock_image with 0 unlocked blocks; OpenCLIP's `--lock-image-unlocked-groups 0` locks
the projection too; raise lock_image_unlocked_layers to also tune the last blocks); the text
tower fully trained from its pretrained weights at lr 1e-4 with a 500-step warmup, cosine,
weight decay 0.1; batch 1024; 10k steps; weight EMA 0.999, evaluated beside the raw weights. The model keys are OpenCLIP ViT-B-16's
(QuickGELU-free, eps 1e-5), so `tools.import_weights --format openclip` of a ViT-B-16 fits;
another architecture needs its own model keys (the import says which key differs).
"""
from synthclip_jax.config.base import base
from synthclip_jax.models.sizes import text_size, vit_size


def get_config():
    c = base()
    c.batch_size = 1024
    c.total_steps = 10_000
    c.warmup_steps = 500
    c.lr = 1e-4
    c.weight_decay = 0.1
    c.model.embed_dim = 512
    c.model.layernorm_eps = 1e-5  # OpenCLIP (PyTorch LayerNorm)
    c.model.image.update(vit_size("B/16"), ln_pre=True, patch_bias=False, pool_type="tok")
    c.model.text.update(text_size("B"), context_length=77, vocab_size=49408, causal=True,
                        pool_type="argmax")
    c.train.lock_image = True
    c.train.lock_image_unlocked_layers = 0
    c.train.ema_decay = 0.999
    c.init_from = ""  # set --config.init_from to the imported workdir (or an OpenCLIP dir)
    c.data.source = "tfrecord"
    c.data.train = "/data/pairs/*.tfrecord"
    c.data.image_size = 224
    c.data.num_workers = 8
    c.checkpoint.every_steps = 1000
    c.eval.every_steps = 1000
    return c
