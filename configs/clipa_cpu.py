"""The CLIPA-style schedule at CPU size: the shapes demo (configs/demo_cpu.py) trained at 16 px
with half the patches dropped, then a short unmasked 32 px stage; the whole schedule, switch
included, runs in a few minutes on 2 CPU cores.

  python -m synthclip_jax.main --config=configs/clipa_cpu.py --workdir=/tmp/clipa

Stage 1 (steps 1-540): 16 px (a 2 x 2 patch grid), model.image.patch_dropout 0.5 (2 of 4
patches kept), 8-token text rows (CLIPA's pre-training length; the demo captions' 8 words are
cut to their first 6) and batch 128; stage 2 (steps 541-600): 32 px, every patch, the whole
16-token context, batch 64. The position embeddings are resized at the switch; the short text
reads the first 8 text position embeddings. Evaluation at the end of each stage, at its
resolution; the final one at 32 px. CLIPA's pre-training batch is four times its
fine-tuning batch; twice here. Values chosen for the demo, not from a paper
(configs/clips_vitl14.py says which of its schedule's values are CLIPA's).
"""
from configs.demo_cpu import get_config as demo_config


def get_config():
    c = demo_config()
    c.total_steps = 600
    c.warmup_steps = 50
    c.train.stages = (dict(fraction=0.9, image_size=16, patch_dropout=0.5, context_length=8,
                           batch_size=128),
                      dict(fraction=0.1))
    c.eval.every_steps = 300
    c.checkpoint.every_steps = 300
    return c
