"""CLIPS at CPU size: two caption roles and the captioner, on the shapes demo data or on shards.

  python -m synthclip_jax.main --config=configs/clips_cpu.py --workdir=/tmp/clips
  python -m synthclip_jax.main --config=configs/clips_cpu.py --workdir=DIR \\
      --config.data.train='SHARDS/*.tfrecord' [--config.eval.retrieval=...]

With data.train empty it renders the demo's shapes with two caption roles into WORKDIR/data:
each record's caption is a long detailed one ("one large red circle at the top left of the
image, on a plain slate background", 16-18 BPE tokens) and its web_caption a short one ("a red
circle"). On other shards the web caption is the record's `web_caption`, or its `caption` when
it has none. The contrastive loss averages the image against the web caption and against a
block of K=8 tokens of the detailed caption (CLIPS: K=32 of ~128-token recaptions; here half of
a 16-18-token caption); the captioner (2 blocks, width 64, 20 queries: the caption and its
EOT fit) learns to write the detailed caption from the image and the web caption.
metrics.jsonl rows carry caption_loss and contrastive_loss beside loss.
"""
from configs import demo_cpu


def get_config():
    c = demo_cpu.get_config()
    c.total_steps = 1500
    c.model.text.context_length = 20  # the whole detailed caption, for retrieval queries
    c.loss.two_captions = True
    c.model.captioner.update(enabled=True, width=64, depth=2, heads=4, num_queries=20)
    c.data.text_reduction = "block"  # with subcaption the best of CLIPS's strategies
    c.data.partial_caption_tokens = 8
    c.data.procedural.web_captions = True
    return c
