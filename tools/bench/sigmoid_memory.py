"""Per-device memory and time of the SigLIP loss: all-gather (`sigmoid`) vs ring (`sigmoid_ring`).

  python -m tools.bench.sigmoid_memory [--devices 8] [--batches 64,128,256,512]
      [--loss_batches 1024,4096,16384] [--steps 3]

Runs on `--devices` fake CPU devices (sets XLA_FLAGS=--xla_force_host_platform_device_count
before importing jax, unless the flag is already set), data-parallel mesh over all of them.

Table 1, the trainer's step: `make_train_step(...)` (already a `jax.jit`) with tiny towers is
lowered and compiled for each global batch and loss; reported are the per-device temp bytes of
`compiled.memory_analysis()` (towers' activations included, so the logits are only the
difference between the two rows) and the median step time.

Table 2, the bare loss: `jax.jit(jax.value_and_grad(make_contrastive_loss(name, mesh)))` on
(B, E) features sharded over the devices, so the logits dominate: the all-gather form holds
b x B logits per device (b = B / devices), the ring form b x b blocks (its custom VJP saves only
the local b x E features). Temp bytes per device, their ratio to the b*B*4 bytes of one f32
logits matrix, and the median time of the value-and-grad call (up to `--loss_time_max`).
"""
import os
import sys

_FLAG = "--xla_force_host_platform_device_count"


def _set_devices(argv):
    n = "8"
    for i, a in enumerate(argv):
        if a.startswith("--devices="):
            n = a.split("=", 1)[1]
        elif a == "--devices" and i + 1 < len(argv):
            n = argv[i + 1]
    if "jax" not in sys.modules and _FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}={n}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_set_devices(sys.argv[1:])

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

LOSSES = ("sigmoid", "sigmoid_ring")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices (before jax import)")
    p.add_argument("--batches", default="64,128,256,512", help="global batches, train step")
    p.add_argument("--loss_batches", default="1024,4096,16384",
                   help="global batches, bare loss ('' to skip)")
    p.add_argument("--embed_dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed calls per point (median)")
    p.add_argument("--loss_time_max", type=int, default=4096,
                   help="time the bare loss only up to this global batch (memory for all)")
    return p.parse_args(argv)


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def tiny_config(loss, batch, embed_dim):
    from synthclip_jax.config.base import base

    c = base()
    c.model.image.update(dict(width=64, depth=2, heads=2, patch_size=16))
    c.model.text.update(dict(width=64, depth=2, heads=2))
    c.model.embed_dim = embed_dim
    c.model.logit_bias_init = -10.0
    c.data.image_size = 32
    c.loss.name = loss
    c.batch_size = batch
    return c


def median_seconds(fn, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_point(loss, batch, embed_dim, steps):
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.data.tokenizer import EOT_ID
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step

    c = tiny_config(loss, batch, embed_dim)
    mesh = sharding.make_mesh(c.mesh)
    setup = make_train_setup(c, mesh)
    state = setup.init()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, EOT_ID, (batch, 77)).astype(np.int32)
    tokens[:, -1] = EOT_ID
    data = sharding.global_batch({
        "image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32), "text": tokens}, mesh)
    compiled = make_train_step(c, setup, mesh).lower(state, data).compile()
    mem = compiled.memory_analysis()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics)

    run()  # warm-up
    return mem, median_seconds(run, steps), len(mesh.devices.flat)


def loss_point(loss, batch, embed_dim, steps, timed):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from synthclip_jax import losses, sharding
    from synthclip_jax.config.base import base

    mesh = sharding.make_mesh(base().mesh)
    feat = NamedSharding(mesh, P(sharding.BATCH_AXES, None))
    rep = sharding.replicated(mesh)
    loss_fn = losses.make_contrastive_loss(loss, mesh)
    fn = jax.jit(jax.value_and_grad(lambda *outputs: loss_fn(losses.ContrastiveOutputs(*outputs)),
                                    argnums=(0, 1, 2, 3)),
                 in_shardings=(feat, feat, rep, rep))
    shapes = (jax.ShapeDtypeStruct((batch, embed_dim), jnp.float32, sharding=feat),) * 2 + (
        jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),) * 2
    compiled = fn.lower(*shapes).compile()
    mem = compiled.memory_analysis()
    if not timed:
        return mem, float("nan")
    keys = jax.random.split(jax.random.key(0), 2)
    img, txt = (jax.device_put(
        jax.random.normal(k, (batch, embed_dim)) / embed_dim**0.5, feat) for k in keys)
    scale = jax.device_put(jnp.float32(np.log(10.0)), rep)
    bias = jax.device_put(jnp.float32(-10.0), rep)
    run = lambda: jax.block_until_ready(compiled(img, txt, scale, bias))
    run()
    return mem, median_seconds(run, steps)


def mib(x):
    return x / 2**20


def main(argv=None):
    args = parse_args(argv)
    import jax

    n = jax.device_count()
    print(f"{n} x {jax.devices()[0].device_kind} devices ({os.cpu_count()} CPU cores), "
          f"data-parallel mesh, embed {args.embed_dim}; temp = memory_analysis() "
          "temp_size_in_bytes per device")
    if ints(args.batches):
        train_step_table(args, n)
    if ints(args.loss_batches):
        bare_loss_table(args, n)


def train_step_table(args, n):
    print("\ntrain step (tiny towers: ViT 64x2 at 32 px, text 64x2), per device:")
    print(f"{'global B':>8} {'local b':>7} {'loss':>13} {'temp MiB':>9} {'args MiB':>9} "
          f"{'step ms':>8}")
    for b in ints(args.batches):
        points = {loss: step_point(loss, b, args.embed_dim, args.steps)[:2] for loss in LOSSES}
        for loss, (mem, sec) in points.items():
            print(f"{b:8d} {b // n:7d} {loss:>13} {mib(mem.temp_size_in_bytes):9.3f} "
                  f"{mib(mem.argument_size_in_bytes):9.3f} {1e3 * sec:8.1f}", flush=True)
        temps = {loss: mem.temp_size_in_bytes for loss, (mem, _) in points.items()}
        print(f"{'':8} {'':7} {'difference':>13} "
              f"{mib(temps['sigmoid'] - temps['sigmoid_ring']):9.3f}")


def bare_loss_table(args, n):
    print("\nbare loss, value_and_grad w.r.t. features/scale/bias, per device:")
    print(f"{'global B':>8} {'local b':>7} {'loss':>13} {'temp MiB':>9} {'/ (b*B*4)':>9} "
          f"{'/ (b*b*4)':>9} {'ms':>8}")
    for b in ints(args.loss_batches):
        local = b // n
        for loss in LOSSES:
            mem, sec = loss_point(loss, b, args.embed_dim, args.steps,
                                  timed=b <= args.loss_time_max)
            t = mem.temp_size_in_bytes
            print(f"{b:8d} {local:7d} {loss:>13} {mib(t):9.3f} {t / (local * b * 4):9.2f} "
                  f"{t / (local * local * 4):9.2f} {1e3 * sec:8.1f}", flush=True)

if __name__ == "__main__":
    main()
