"""A tiny CLIP that learns captioned shapes in a few minutes on 2 CPU cores.

  python -m synthclip_jax.main --config=configs/demo_cpu.py --workdir=/tmp/demo
"""
from synthclip_jax.config_base import base


def get_config():
    c = base()
    c.total_steps = 600
    c.batch_size = 64
    c.lr = 1e-3
    c.warmup_steps = 50
    c.weight_decay = 0.1
    c.model.embed_dim = 64
    c.model.image.update(width=64, depth=3, heads=4, patch_size=8)
    c.model.text.update(width=64, depth=3, heads=4, context_length=16)
    c.data.source = "synthetic_shapes"
    c.data.image_size = 32
    c.checkpoint.every_steps = 200
    c.log.every_steps = 20
    return c
