"""SimCLIP on CPU: the demo's tiny CLIP trained on online similarity-cluster batches.

  python -m synthclip_jax.main --config=configs/simclip_cpu.py --workdir=/tmp/simclip \
      [--config.data.train='shards/*.tfrecord']

SimCLIP (sx-liu/SimCLIP) fills each batch partly with clusters of similar captions (hard
negatives): at the start of every epoch the current model embeds every training caption
(`data.clusters.online`, text modality), the nearest-neighbour index is built on the devices,
and int(batch_size * p) examples of each batch come in clusters of 4 (SimCLIP's default
--cluster-size), the rest shuffled. p starts at 1/8 and doubles at epochs 1, 2 and 3 (SimCLIP's
proportion warmup, its default 4,6,...,18 compressed to this run's ~5 epochs). AdamW decays every
parameter (SimCLIP: AdamW over all parameters, betas (0.9, 0.98), eps 1e-6, wd 0.1).

With `data.train` empty it renders the shapes demo data into WORKDIR/data (as configs/demo_cpu.py)
and evaluates on its zero-shot and retrieval sets. Deviation: SimCLIP embeds a random caption per
record with its training loader; here the first caption (a deterministic bank).
"""
from configs.demo_cpu import get_config as demo_config


def get_config():
    c = demo_config()
    c.optim.update(b1=0.9, b2=0.98, eps=1e-6, weight_decay_policy="all")
    c.weight_decay = 0.1
    c.data.clusters.update(enabled=True, online=True, modality="text", proportion=1 / 8,
                           warmup_epochs=(1, 2, 3), cluster_size=4, neighborhood=1,
                           every_steps=0)
    return c
