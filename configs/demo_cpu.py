"""A tiny CLIP that learns captioned shapes in a few minutes on 2 CPU cores, from nothing.

  python -m synthclip_jax.main --config=configs/demo_cpu.py --workdir=/tmp/demo

The first run renders its data into WORKDIR/data (TFRecord shards of shapes with exact captions
such as "a large red circle at the top left", retrieval shards, and a zero-shot folder of the
colour/shape pairs that training never shows), then trains, evaluating zero-shot accuracy on
those unseen pairs (24 classes, chance 4.2%) and retrieval as it goes. Rerunning resumes.
"""
from synthclip_jax.config.base import base


def get_config():
    c = base()
    c.total_steps = 1500
    c.batch_size = 64
    c.lr = 1e-3
    c.warmup_steps = 100
    c.weight_decay = 0.1
    c.model.embed_dim = 64
    c.model.image.update(width=64, depth=3, heads=4, patch_size=8)
    c.model.text.update(width=64, depth=3, heads=4, context_length=16)
    c.data.source = "tfrecord"
    c.data.train = ""  # empty: render the shapes demo data below into WORKDIR/data
    c.data.procedural.update(num_train=20000, num_retrieval=256, zeroshot_per_class=32,
                             image_size=40)
    c.data.image_size = 32
    c.data.rrc_scale = (0.85, 1.0)  # mild: captions name positions
    c.data.num_workers = 1
    c.data.prefetch_per_worker = 4
    c.eval.update(every_steps=250, templates="shapes", batch_size=256)
    c.checkpoint.every_steps = 500
    c.log.every_steps = 25
    return c
