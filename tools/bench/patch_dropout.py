"""Step time with patch dropout (`model.image.patch_dropout`) against none, same run.

  python -m tools.bench.patch_dropout [--size B/16] [--image-size 224] [--batch 8] [--steps 5]
                                      [--fractions 0,0.5,0.75]

Compiles the trainer's own step (`make_train_step`, one CPU device) for a ViT-`size` + text-B
CLIP (context 77, vocabulary 49408, embed 512) once per fraction, and prints each median step
time, its ratio to the first fraction's, and the analytic FLOP ratio (model_flops.py, which
counts the kept tokens) beside it. The towers are what patch dropout shrinks; the text tower,
the loss and the optimizer are not, so the measured ratio sits above the image tower's share.
"""
import argparse

import jax
import numpy as np

from synthclip_jax import sharding
from synthclip_jax.config.base import base
from synthclip_jax.model_flops import step_flops
from synthclip_jax.models.sizes import vit_size
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step
from tools.bench.mesh_efficiency import median_step_ms


def config_for(size, image_size, batch, fraction):
    c = base()
    c.batch_size, c.total_steps, c.warmup_steps = batch, 100, 1
    c.mesh.data = 1
    c.model.image.update(vit_size(size))
    c.model.image.patch_dropout = fraction
    c.data.image_size = image_size
    return c


def step_ms(config, steps):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    rng = np.random.default_rng(0)
    b, s, ctx = config.batch_size, config.data.image_size, config.model.text.context_length
    host = {"image": rng.integers(0, 256, (b, s, s, 3), np.uint8),
            "text": rng.integers(1, 49406, (b, ctx)).astype(np.int32)}
    return median_step_ms(make_train_step(config, setup, mesh), setup.init(),
                          sharding.global_batch(host, mesh), steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="B/16", help="ViT size (models/sizes.py)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per fraction (median)")
    p.add_argument("--fractions", default="0,0.5,0.75")
    args = p.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    first = None
    for fraction in fractions:
        config = config_for(args.size, args.image_size, args.batch, fraction)
        ms, flops = step_ms(config, args.steps), step_flops(config)
        first = first or (ms, flops)
        print(f"patch_dropout {fraction:4.2f}  {ms:9.1f} ms/step  ratio vs {fractions[0]:g} = "
              f"{ms / first[0]:.2f}  (FLOP ratio {flops / first[1]:.2f})", flush=True)


if __name__ == "__main__":
    main()
