"""Step time with patch dropout (`model.image.patch_dropout`) and at lower resolution (a CLIPA
low-resolution stage) against the full step, same run.

  python -m tools.bench.patch_dropout [--size B/16] [--image-size 224] [--batch 8] [--steps 5]
                                      [--fractions 0,0.5,0.75] [--low-res 112,96]
                                      [--context-lengths 77]

`--low-res`: also time each of these resolutions without patch dropout (a stage's
`image_size`; B/16 at 96 px has the 6 x 6 tokens of CLIPA's 84 px at patch 14).
`--context-lengths`: also time the first resolution with these shorter text contexts (a
stage's `context_length`); the ratios are all to the first row.

Compiles the trainer's own step (`make_train_step`, one CPU device) for a ViT-`size` + text-B
CLIP (context 77, vocabulary 49408, embed 512) once per point, and prints each median step
time, wall and process CPU (the CPU time is the steadier on a shared machine), their ratios to
the first row's, and the analytic FLOP ratio (model_flops.py, which counts the kept tokens and
the text rows) beside them. The towers are what patch dropout shrinks; the text tower,
the loss and the optimizer are not, so the measured ratio sits above the image tower's share.
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np

from synthclip_jax import sharding
from synthclip_jax.config.base import base
from synthclip_jax.model_flops import step_flops
from synthclip_jax.models.sizes import vit_size
from synthclip_jax.train.state import make_train_setup
from synthclip_jax.train.step import make_train_step


def config_for(size, image_size, batch, fraction, text_length=0):
    c = base()
    c.batch_size, c.total_steps, c.warmup_steps = batch, 100, 1
    c.mesh.data = 1
    c.model.image.update(vit_size(size))
    c.model.image.patch_dropout = fraction
    c.data.image_size = image_size
    c.data.train_context_length = text_length  # 0: model.text.context_length
    return c


def step_times(config, steps) -> tuple:
    """(median wall ms, median process CPU ms) per step, after a warm-up (compile) step. The
    CPU time (all of XLA's threads) hardly moves when other processes share the cores, which
    inflates the wall time by however busy the machine happens to be at that point."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = make_train_setup(config, mesh)
    rng = np.random.default_rng(0)
    b, s = config.batch_size, config.data.image_size
    ctx = config.data.train_context_length or config.model.text.context_length
    batch = sharding.global_batch(
        {"image": rng.integers(0, 256, (b, s, s, 3), np.uint8),
         "text": rng.integers(1, 49406, (b, ctx)).astype(np.int32)}, mesh)
    step, state = make_train_step(config, setup, mesh), setup.init()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="B/16", help="ViT size (models/sizes.py)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per fraction (median)")
    p.add_argument("--fractions", default="0,0.5,0.75")
    p.add_argument("--low-res", default="", help="comma-separated image sizes, no dropout")
    p.add_argument("--context-lengths", default="", help="comma-separated text lengths")
    args = p.parse_args(argv)
    points = [(args.image_size, float(f), 0) for f in args.fractions.split(",")]
    points += [(int(s), 0.0, 0) for s in args.low_res.split(",") if s]
    points += [(args.image_size, 0.0, int(n)) for n in args.context_lengths.split(",") if n]
    first = None
    for image_size, fraction, text_length in points:
        config = config_for(args.size, image_size, args.batch, fraction, text_length)
        (wall, cpu), flops = step_times(config, args.steps), step_flops(config)
        first = first or (wall, cpu, flops)
        print(f"{image_size:4d} px  patch_dropout {fraction:4.2f}  text "
              f"{text_length or config.model.text.context_length:3d}  wall {wall:9.1f} ms "
              f"(x{wall / first[0]:.2f})  cpu {cpu:9.1f} ms (x{cpu / first[1]:.2f})  "
              f"FLOPs x{flops / first[2]:.2f}  load {os.getloadavg()[0]:.1f}", flush=True)

if __name__ == "__main__":
    main()
