"""A supervised classifier at CPU size (`train.task='classify'`): the Scaling-laws seed's
supervised setting (configs/scaling_supervised_vitb16.py) shrunk to a tiny ViT on 32 px class
images the procedural renderer draws, for a few CPU minutes and for dataset-scale sweeps.

  # class images: 8 classes of data_gen/shape_classes.txt, 64 per class, and a held-out set
  python -m data_gen.images --prompts classnames data_gen/shape_classes.txt --backend shapes \
      --images-per-prompt 64 --save-size 32 --out /tmp/classes/pairs
  python -m data_gen.write --pairs '/tmp/classes/pairs/*.tar' --out /tmp/classes/train --num-shards 2
  python -m data_gen.images --prompts classnames data_gen/shape_classes.txt --backend shapes \
      --images-per-prompt 16 --save-size 32 --seed 7 --out /tmp/classes/val_pairs
  python -m data_gen.write --pairs '/tmp/classes/val_pairs/*.tar' --out /tmp/classes/val --num-shards 1
  python -m synthclip_jax.main --config=configs/classify_cpu.py --workdir=/tmp/classify

Same preprocessing as the seed's classifiers: Normalize(0.5, 0.5), evaluated with Resize
round(32 / 0.875) = 37 and CenterCrop 32 (evaluate/classify.py); label smoothing 0.1.
"""
from synthclip_jax.config.base import base

CLASSES = 8  # data_gen/shape_classes.txt


def get_config():
    c = base()
    c.train.task = "classify"
    c.model.num_classes = CLASSES
    c.model.image.update(width=64, depth=2, heads=4, patch_size=8, ln_pre=False,
                         patch_bias=True, pool_type="tok")
    c.model.layernorm_eps = 1e-6
    c.loss.label_smoothing = 0.1
    c.seed = 0
    c.batch_size = 64
    c.total_steps = 300
    c.warmup_steps = 30
    c.lr = 1e-3
    c.weight_decay = 0.05
    c.optim.b2 = 0.999
    c.data.train = "/tmp/classes/train/*.tfrecord"
    c.data.image_size = 32
    c.data.rrc_scale = (0.6, 1.0)
    c.data.mean = c.data.std = (0.5, 0.5, 0.5)
    c.data.num_workers = 0
    c.data.read_threads = 4
    c.eval.classify = "val=/tmp/classes/val/*.tfrecord"
    c.eval.every_steps = 100
    c.eval.batch_size = 128
    c.checkpoint.every_steps = 100
    c.log.every_steps = 25
    return c
