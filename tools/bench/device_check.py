"""The one-shot accelerator check: everything a first GPU/TPU lease should answer, in one run.

  bash tools/bench/device_check.sh [--smoke]          (the wrapper installs .whl/ offline)
  python -m tools.bench.device_check [--smoke] [--out DIR] [--budget_s 450] [--only a,b]

Parts, in order of value; each has a time box (a sweep stops starting configs when its box is
spent and says which it skipped), and after each part the whole JSON so far is printed (one line,
`PART name {...}`) and written to `OUT/device_check.json` (OUT: --out, else $OUT, else
./device_check_out), so a run cut off by its caller still returns what it measured:

  matmul_peak      measured bf16 (and f32) n x n matmul FLOP/s: the MFU denominator
  b16_step         ViT-B/16 + 12x512 text, 224 px, 77 tokens, bf16, softmax, batch 256/chip:
                   samples/s, step ms, MFU (analytic FLOPs, synthclip_jax/model_flops.py),
                   compile s, compiled temp memory, device peak memory
  step_sweep       batch 128/256/512 x softmax|sigmoid_ring x attention xla|cudnn
  input_pipeline   writes TFRecords of 256 px JPEGs, then the Grain pipeline's images/s with one
                   worker per core (and 0 workers)
  loss_vs_float32  3 train steps on the device in bf16 against the same steps in float32 on CPU
                   (same init, same batches): losses within bf16 tolerance
  data_gen_images  SD1.5-architecture diffusers pipeline (random weights, fp16, DDIM 50, CFG 2,
                   512 px, batch 16) through data_gen.images' backend: images/s, GPU-days / 30M
  data_gen_captions two Mistral-7B-shaped decoder layers, transformers generate, scaled to 32
                   layers: captions/s, GPU-days / 30M (tools/bench/device_check_gen.py)

`--smoke` runs the same code at tiny sizes on CPU (tests/test_device_check.py).
"""
import argparse
import json
import os
import time
import traceback
from pathlib import Path

from synthclip_jax.model_flops import clip_step_flops
from tools.bench.flops import measure_peak_flops

# Per-chip sizes. image: (width, depth, heads, patch), text: (width, depth, heads).
FULL = dict(image=(768, 12, 12, 16), image_size=224, text=(512, 12, 8), embed_dim=512,
            batch=256, sweep_batches=(256, 512, 128), sweep_losses=("softmax", "sigmoid_ring"),
            peak_n=8192, steps=10, warmup=2,
            records=4096, pipeline_batch=256, loss_model=dict(image=(256, 4, 4, 16),
                                                              text=(256, 4, 4), batch=32))
SMOKE = dict(image=(32, 1, 2, 8), image_size=16, text=(32, 1, 2), embed_dim=16, batch=8,
             sweep_batches=(8,), sweep_losses=("softmax",), peak_n=256, steps=2, warmup=1, records=32,
             pipeline_batch=8, loss_model=dict(image=(32, 1, 2, 8), text=(32, 1, 2), batch=8))
CONTEXT = 77
# seconds per part (full run); the smoke run has only the whole run's box
BUDGETS = dict(matmul_peak=20, b16_step=100, step_sweep=150, input_pipeline=45,
               loss_vs_float32=60, data_gen_images=70, data_gen_captions=40)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, the same code")
    p.add_argument("--out", default=os.environ.get("OUT") or "device_check_out",
                   help="folder for device_check.json (default $OUT or ./device_check_out)")
    p.add_argument("--budget_s", type=float, default=450.0, help="whole-run time box")
    p.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    return p.parse_args(argv)


class Report:
    """The results so far, printed and written (atomically) after every part."""

    def __init__(self, out: Path, header: dict):
        self.path = out / "device_check.json"
        out.mkdir(parents=True, exist_ok=True)
        self.data = {**header, "parts": {}}
        self.write()

    def add(self, name: str, result: dict):
        self.data["parts"][name] = result
        print(f"PART {name} {json.dumps(result, default=str)}", flush=True)
        self.write()

    def write(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def model_config(spec, batch: int, *, loss="softmax", attention="auto", dtype="bfloat16"):
    from synthclip_jax.config.base import base

    c = base()
    vw, vd, vh, vp = spec["image"]
    tw, td, th = spec["text"]
    c.model.image.update(dict(width=vw, depth=vd, heads=vh, patch_size=vp))
    c.model.text.update(dict(width=tw, depth=td, heads=th))
    c.model.embed_dim = spec.get("embed_dim", 512)
    c.model.dtype, c.model.attention_impl = dtype, attention
    c.data.image_size = spec.get("image_size", 224)
    c.batch_size = batch
    c.loss.name = loss
    if loss != "softmax":
        c.model.logit_bias_init = -10.0
    return c


def step_flops(config) -> int:
    m = config.model
    return clip_step_flops(batch=config.batch_size, image_size=config.data.image_size,
                           patch=m.image.patch_size, vit_width=m.image.width,
                           vit_depth=m.image.depth, text_width=m.text.width,
                           text_depth=m.text.depth, context=CONTEXT,
                           embed_dim=m.embed_dim)["step"]


def random_batch(batch: int, image_size: int, seed: int = 0):
    from tools.bench.train_step import make_inputs
    images, tokens = make_inputs(batch, image_size, seed)
    return {"image": images, "text": tokens}


def peak_memory() -> dict:
    from synthclip_jax.run.device_memory import device_memory
    return device_memory()


def measure_step(config, steps: int, warmup: int, peak: float | None, devices=None) -> dict:
    """Compile and time the trainer's own step (make_train_step) on `devices` (default all)."""
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step

    mesh = sharding.make_mesh(config.mesh, devices)
    n = len(mesh.devices.flat)
    config.batch_size *= n  # the spec's batch is per chip
    setup = make_train_setup(config, mesh)
    batch = sharding.global_batch(random_batch(config.batch_size, config.data.image_size), mesh)
    t0 = time.perf_counter()
    # lowered from the abstract state: a config that cannot compile fails before any init
    compiled = make_train_step(config, setup, mesh).lower(setup.abstract_state, batch).compile()
    compile_s = time.perf_counter() - t0
    state = setup.init()
    memory = compiled.memory_analysis()
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])  # waits for the last step
    seconds = (time.perf_counter() - t0) / steps
    flops = step_flops(config)
    result = dict(devices=f"{n} x {mesh.devices.flat[0].device_kind}",
                  global_batch=config.batch_size, samples_per_s=config.batch_size / seconds,
                  samples_per_s_per_chip=config.batch_size / seconds / n,
                  step_ms=1e3 * seconds, compile_s=compile_s, loss=loss,
                  model_tflop_per_step=flops / 1e12, achieved_tflop_s=flops / seconds / 1e12)
    if peak:
        result["mfu_vs_measured_peak"] = flops / seconds / n / peak
    if memory is not None:
        result["compiled_temp_gib"] = memory.temp_size_in_bytes / 2**30
        result["compiled_args_gib"] = memory.argument_size_in_bytes / 2**30
    result.update({k: v / 2**30 for k, v in peak_memory().items()})  # *_bytes in GiB
    return result


# ---- parts ------------------------------------------------------------------------------------
def part_matmul_peak(spec, ctx, box):
    out = {}
    for dtype in ("bfloat16", "float32"):
        out[f"{dtype}_tflop_s"] = measure_peak_flops(spec["peak_n"], dtype=dtype) / 1e12
    out["n"] = spec["peak_n"]
    ctx["peak"] = out["bfloat16_tflop_s"] * 1e12
    return out


def part_b16_step(spec, ctx, box):
    config = model_config(spec, spec["batch"])
    result = measure_step(config, spec["steps"], spec["warmup"], ctx.get("peak"))
    result["attention_impl"] = "auto"
    return result


def part_step_sweep(spec, ctx, box):
    """Most informative first: the attention kernels at the goal batch, then the losses and
    batch sizes. A config that fails (e.g. cuDNN absent) is recorded with its error."""
    from synthclip_jax.models.layers import attention_impl

    configs = [(b, loss, attn) for b in spec["sweep_batches"]
               for loss in spec["sweep_losses"] for attn in ("xla", "cudnn")]
    # b16_step ran softmax at the first batch with attention "auto": not again
    auto = attention_impl("auto", "bfloat16", spec["image"][0] // spec["image"][2])
    rows, last = [], 0.0
    for batch, loss, attn in configs:
        name = f"b{batch}_{loss}_{attn}"
        if (batch, loss, attn) == (spec["batch"], "softmax", auto):
            rows.append(dict(config=name, same_as="b16_step"))
            continue
        if box.left() < last * 1.2:
            rows.append(dict(config=name, skipped="time box"))
            continue
        t0 = time.perf_counter()
        try:
            row = measure_step(model_config(spec, batch, loss=loss, attention=attn),
                               spec["steps"], spec["warmup"], ctx.get("peak"))
        except Exception as e:  # noqa: BLE001 - one config's failure is a result, not the end
            row = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        last = time.perf_counter() - t0
        rows.append(dict(config=name, **row))
    return dict(rows=rows)


def part_input_pipeline(spec, ctx, box):
    import tempfile

    from tools.bench.input import pipeline_rate, write_records

    config = model_config(spec, spec["pipeline_batch"])
    config.data.image_size = spec["image_size"]
    out = dict(records=spec["records"], batch=spec["pipeline_batch"], cores=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config.data.train = write_records(Path(tmp), spec["records"])
        out["write_s"] = time.perf_counter() - t0
        batches = max(spec["records"] // spec["pipeline_batch"], 1)
        for workers in (os.cpu_count() or 1, 0):
            if box.left() <= 0:
                out[f"workers_{workers}"] = "skipped: time box"
                continue
            out[f"images_per_s_workers_{workers}"] = pipeline_rate(config, workers, batches)[0]
    return out


def part_loss_vs_float32(spec, ctx, box):
    """The device's bf16 steps against float32 on CPU from the same init and batches: the
    losses differ by bf16 rounding only (relative tolerance 2e-2)."""
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step

    small = spec["loss_model"]
    batch_size = small["batch"]
    shape = dict(small, image_size=spec["image_size"], embed_dim=spec["embed_dim"])
    batches = [random_batch(batch_size, spec["image_size"], seed=s) for s in range(3)]

    def losses(dtype, devices):
        config = model_config(shape, batch_size, dtype=dtype, attention="auto")
        mesh = sharding.make_mesh(config.mesh, devices[:1])
        setup = make_train_setup(config, mesh)
        step, state, out = make_train_step(config, setup, mesh), setup.init(), []
        for b in batches:
            state, metrics = step(state, sharding.global_batch(b, mesh))
            out.append(float(metrics["loss"]))
        return out

    device = losses("bfloat16", jax.devices())
    reference = losses("float32", jax.devices("cpu"))
    rel = [abs(a - b) / abs(b) for a, b in zip(device, reference)]
    return dict(device_bf16=device, cpu_float32=reference, max_rel_diff=max(rel),
                tolerance=2e-2, ok=max(rel) <= 2e-2)


PARTS = {"matmul_peak": part_matmul_peak, "b16_step": part_b16_step,
         "step_sweep": part_step_sweep, "input_pipeline": part_input_pipeline,
         "loss_vs_float32": part_loss_vs_float32}


class TimeBox:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def main(argv=None):
    args = parse_args(argv)
    from tools.bench import device_check_gen

    parts = {**PARTS, **device_check_gen.PARTS}
    only = [p for p in args.only.split(",") if p]
    unknown = sorted(set(only) - set(parts))
    if unknown:
        raise SystemExit(f"--only {','.join(unknown)}: no such part; parts: {', '.join(parts)}")
    import jax

    spec = SMOKE if args.smoke else FULL
    run_box = TimeBox(args.budget_s)
    report = Report(Path(args.out), dict(
        smoke=args.smoke, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        jax=jax.__version__, backend=jax.default_backend(),
        devices=[d.device_kind for d in jax.devices()], cores=os.cpu_count(),
        xla_flags=os.environ.get("XLA_FLAGS", "")))
    ctx = {"smoke": args.smoke}
    for name, part in parts.items():
        if only and name not in only:
            continue
        # smoke: no box per part (a loaded CI machine), only the whole run's
        box = TimeBox(run_box.left() if args.smoke else min(BUDGETS[name], run_box.left()))
        if box.left() <= 0:
            report.add(name, dict(skipped="whole-run time box spent"))
            continue
        t0 = time.perf_counter()
        try:
            result = part(spec, ctx, box)
        except Exception as e:  # noqa: BLE001 - a failed part is reported; the next one runs
            result = dict(error=f"{type(e).__name__}: {e}"[:1000],
                          traceback=traceback.format_exc()[-3000:])
        result["seconds"] = time.perf_counter() - t0
        report.add(name, result)
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
