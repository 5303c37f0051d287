"""SynthCLIP ViT-B/16 (configs/vitb16_synthci30m.py) with FLIP / OpenCLIP patch dropout: half
of each image's patches dropped for the first 95% of the steps, then an unmasked stage (the
"short unmasked phase at the end" of OpenCLIP's README, `--force-patch-dropout 0`). The
fraction 0.5 is FLIP's default; the 5% unmasked share is chosen.

  python -m synthclip_jax.main --config=configs/vitb16_synthci30m_flip.py --workdir=DIR
"""
from configs.vitb16_synthci30m import get_config as synthclip_config


def get_config():
    c = synthclip_config()
    c.train.stages = (dict(fraction=0.95, patch_dropout=0.5), dict(fraction=0.05))
    return c
