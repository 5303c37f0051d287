"""What each mesh costs per device: the trainer's step compiled for several (data, fsdp, tensor).

  python -m tools.bench.mesh_efficiency [--sizes demo,b16] [--meshes 8,1,1:4,2,1:1,8,1:4,1,2:2,2,2]
      [--steps 3] [--time_max_batch 256]

Runs on 8 fake CPU devices (XLA_FLAGS is set before jax is imported). For each model size and
mesh, `make_train_step(...)` (the trainer's own jit, explicit shardings) is lowered and compiled
at the same global batch; printed per device: XLA's memory analysis (temporaries, arguments =
parameters + optimizer state + batch) and cost analysis (FLOPs), and for the small sizes the
median step time. Ratios are against the first mesh (pure data parallelism). FSDP should cost
what data parallelism costs: the same FLOPs and temporaries per device (plus one layer's
gathered weights) with 1/fsdp of the arguments.
"""
import os
import sys

_FLAG = "--xla_force_host_platform_device_count"
if "jax" not in sys.modules and _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from synthclip_jax import sharding  # noqa: E402
from synthclip_jax.train.state import make_train_setup  # noqa: E402
from synthclip_jax.train.step import make_train_step  # noqa: E402

MiB = 2**20


def size_config(name: str):
    """demo: configs/demo_cpu.py at batch 256; b16: the SynthCLIP ViT-B/16 config at batch 64."""
    if name == "demo":
        from configs.demo_cpu import get_config
        c = get_config()
        c.batch_size = 256
    elif name == "vit":  # a small ViT (the test's second model): 4 layers of 128, 32 px
        from configs.demo_cpu import get_config
        c = get_config()
        c.batch_size = 64
        c.model.image.update(width=128, depth=4, heads=4, patch_size=8)
        c.model.text.update(width=128, depth=4, heads=4)
    elif name == "b16":
        from configs.vitb16_synthci30m import get_config
        c = get_config()
        c.batch_size = 64
    else:
        raise ValueError(f"--sizes: unknown size {name!r}; choose demo, vit or b16")
    c.data.source = "shapes"
    return c


def abstract_batch(config, mesh):
    s, n = config.data.image_size, config.batch_size
    batch_sh = sharding.batch_sharding(mesh)
    return {"image": jax.ShapeDtypeStruct((n, s, s, 3), np.float32, sharding=batch_sh),
            "text": jax.ShapeDtypeStruct((n, config.model.text.context_length), np.int32,
                                         sharding=batch_sh)}


def compile_step(config, mesh_shape):
    config = config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    setup = make_train_setup(config, mesh)
    step = make_train_step(config, setup, mesh)
    compiled = step.lower(setup.abstract_state, abstract_batch(config, mesh)).compile()
    return config, mesh, setup, step, compiled


def measure(config, mesh_shape, steps: int):
    """-> dict of per-device temp/argument MiB, GFLOPs and (steps > 0) median step ms."""
    config, mesh, setup, step, compiled = compile_step(config, mesh_shape)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row = {"temp": mem.temp_size_in_bytes / MiB, "args": mem.argument_size_in_bytes / MiB,
           "gflops": cost.get("flops", float("nan")) / 1e9, "ms": float("nan")}
    if steps:
        state = setup.init()
        rng = np.random.default_rng(0)
        s, n = config.data.image_size, config.batch_size
        batch = {"image": rng.normal(size=(n, s, s, 3)).astype(np.float32),
                 "text": rng.integers(1, 100, (n, config.model.text.context_length)).astype(np.int32)}
        batch = sharding.global_batch(batch, mesh)
        row["ms"] = median_step_ms(step, state, batch, steps)
    return row


def median_step_ms(step, state, batch, steps: int) -> float:
    """Median wall time of `steps` calls of a train step, after one warm-up (compile) call."""
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="demo,vit,b16")
    p.add_argument("--meshes", default="8,1,1:4,2,1:1,8,1:4,1,2:2,2,2",
                   help="colon-separated data,fsdp,tensor; the first is the reference")
    p.add_argument("--steps", type=int, default=3, help="timed steps per point (median)")
    p.add_argument("--time_max_batch", type=int, default=256,
                   help="time only sizes whose model is not b16 (memory/FLOPs for all)")
    args = p.parse_args(argv)
    meshes = [tuple(int(v) for v in m.split(",")) for m in args.meshes.split(":")]
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    for name in args.sizes.split(","):
        config = size_config(name)
        steps = 0 if name == "b16" else args.steps
        print(f"\n{name}: global batch {config.batch_size}, per device (XLA analysis)")
        print(f"{'mesh':>10} {'temp MiB':>9} {'x DP':>5} {'args MiB':>9} {'x DP':>5} "
              f"{'GFLOP':>8} {'x DP':>5} {'step ms':>8} {'x DP':>5}")
        ref = None
        for m in meshes:
            row = measure(config, m, steps)
            ref = ref or row
            r = {k: row[k] / ref[k] if ref[k] else float("nan") for k in row}
            print(f"{str(m):>10} {row['temp']:9.1f} {r['temp']:5.2f} {row['args']:9.1f} "
                  f"{r['args']:5.2f} {row['gflops']:8.2f} {r['gflops']:5.2f} {row['ms']:8.0f} "
                  f"{r['ms']:5.2f}", flush=True)


if __name__ == "__main__":
    main()
