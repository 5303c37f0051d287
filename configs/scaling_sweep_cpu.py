"""The CPU dataset-scale sweep of tools/bench/RESULTS.md: configs/classify_cpu.py's tiny ViT on
the 9 classes of data_gen/shape_classes_grid.txt (3 colours x 3 shapes: the shape must be
seen, not only the colour), 600 steps of batch 32 at every scale (`--steps 600`), 4 px patches.

  G=data_gen/shape_classes_grid.txt
  python -m data_gen.images --prompts classnames $G --backend shapes --images-per-prompt 120 \
      --save-size 32 --seed 1 --out /tmp/scaling/real_pairs
  python -m data_gen.images --prompts classnames $G --backend shapes --images-per-prompt 120 \
      --save-size 16 --seed 2 --out /tmp/scaling/synthetic_pairs
  python -m data_gen.images --prompts classnames $G --backend shapes --images-per-prompt 20 \
      --save-size 32 --seed 9 --out /tmp/scaling/val_pairs
  for s in real synthetic val; do python -m data_gen.write --pairs "/tmp/scaling/${s}_pairs/*.tar" \
      --out /tmp/scaling/$s --num-shards 2; done
  python -m tools.scaling_sweep --config configs/scaling_sweep_cpu.py --scales 64,128,256,512,1024 \
      --series real='/tmp/scaling/real/*.tfrecord' \
      --series synthetic='/tmp/scaling/synthetic/*.tfrecord' --steps 600 --out /tmp/scaling/sweep

"real" images are drawn at 32 px like the held-out set; "synthetic" ones at 16 px (upsampled by
the crop: a blurrier domain than the evaluation's, standing in for a generator's domain gap).
"""
from configs.classify_cpu import get_config as classify_config


def get_config():
    c = classify_config()
    c.model.num_classes = 9
    c.model.image.patch_size = 4  # 64 patches of 32 px: small shapes need the finer grid
    c.batch_size = 32
    c.total_steps = 600
    c.warmup_steps = 60
    c.data.train = "/tmp/scaling/real/*.tfrecord"
    c.eval.classify = "val=/tmp/scaling/val/*.tfrecord"
    c.checkpoint.every_steps = 0  # the final checkpoint only
    c.log.every_steps = 50
    return c
