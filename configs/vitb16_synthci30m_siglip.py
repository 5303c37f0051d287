"""SigLIP variant of the SynthCLIP recipe: the chunked (ring) sigmoid loss.

Changes from vitb16_synthci30m.py, following the SigLIP paper: sigmoid loss with learned
temperature and bias initialised to log(10) and -10, lr 1e-3, beta2 0.95 for stability, and a
decoupled weight decay of 1e-4 (optax multiplies weight_decay by the lr: 0.1 x 1e-3).
`sigmoid_ring` keeps per-device logits at (local batch)^2; use `sigmoid` for the all-gather form.
"""
import math

from configs import vitb16_synthci30m


def get_config():
    c = vitb16_synthci30m.get_config()
    c.loss.name = "sigmoid_ring"
    c.model.logit_scale_init = math.log(10.0)
    c.model.logit_bias_init = -10.0
    c.lr = 1e-3
    c.weight_decay = 0.1
    c.optim.b2 = 0.95
    return c
