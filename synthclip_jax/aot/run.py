"""--mode=compile: the exact train step of a config, compiled on this CPU host for a TPU
topology or GPU nodes (`compile.target`), with no device and nothing allocated.

The step is built by the trainer's own code (`make_train_setup`, `make_train_step`: the
config's mesh, dtype, remat, accumulation, loss, towers) over the target's devices from
`jax.experimental.topologies`, lowered with ShapeDtypeStructs and compiled by the target's
compiler (libtpu, or the CUDA plugin with XLA's GpuTargetConfig of the GPU). Exit status: 0 it
fits, 1 it does not (one line: the per-device batch and what would help), 2 a bad config,
3 the compiler libraries are missing (one line: the install command).
"""
import dataclasses
import importlib.util
import json
import os
import sys
import time

from synthclip_jax.aot import report
from synthclip_jax.aot.targets import Target, parse
from synthclip_jax.config.error import ConfigError

INSTALL = "pip install -e '.[aot]'"
MISSING_EXIT = 3


def missing_library(target: Target) -> str:
    """'' when the compiler for `target` is installed, else the one line saying what to do."""
    module = "libtpu" if target.platform == "tpu" else "jax_cuda12_plugin"
    if importlib.util.find_spec(module) is None:
        return (f"compile: {target.name} needs {module} (not installed); install the compiler "
                f"libraries with: {INSTALL}")
    return ""


def target_devices(target: Target) -> list:
    # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) meant for processes that drive
    # the chips; compiling drives none, so several compiles (and a test run) may share a host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    if target.platform == "tpu":
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology,
            chip_config_name=target.chip_config_name,
            chips_per_host_bounds=target.chips_per_host_bounds, num_slices=target.num_slices)
    else:
        desc = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                            target_config=target.gpu_target_config())
    return list(desc.devices)


def abstract_batch(config, mesh) -> dict:
    """The global batch the data pipeline feeds the step (data/pipeline.py's example keys)."""
    import jax
    import numpy as np
    from synthclip_jax import sharding

    n, s = config.batch_size, config.data.image_size
    context = config.model.text.context_length
    shapes = {"image": ((n, s, s, 3), np.uint8), "text": ((n, context), np.int32)}
    if config.loss.two_captions or config.model.captioner.enabled:
        shapes["web_text"] = ((n, context), np.int32)
    if config.model.captioner.enabled:
        shapes["caption"] = ((n, config.model.captioner.num_queries + 1), np.int32)
    sh = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh) for k, (shape, dtype) in
            shapes.items()}


@dataclasses.dataclass
class Compiled:
    config: object
    mesh: object
    executable: object
    seconds: float
    compiler_options: dict = dataclasses.field(default_factory=dict)


# Without a GPU to autotune on, XLA's GPU compiler can find no Triton tiling for some small
# matmuls ("Couldn't find output tile sizes"); cuBLAS (what autotuning falls back to) compiles.
NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def compile_lowered(lowered, platform: str):
    try:
        return lowered.compile(), {}
    except Exception as error:
        if platform != "cuda" or "output tile sizes" not in str(error):
            raise
    return lowered.compile(compiler_options=NO_TRITON_GEMM), NO_TRITON_GEMM


def compile_step(config, devices, platform: str = "tpu") -> Compiled:
    from synthclip_jax import sharding
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step

    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch_size(config.batch_size, mesh, config.train.grad_accum_steps)
    setup = make_train_setup(config, mesh)
    step = make_train_step(config, setup, mesh)
    start = time.perf_counter()
    lowered = step.lower(setup.abstract_state, abstract_batch(config, mesh))
    executable, options = compile_lowered(lowered, platform)
    return Compiled(config, mesh, executable, time.perf_counter() - start, options)


def evaluates(config) -> bool:
    e = config.eval
    return bool(e.every_steps and (e.zeroshot or e.retrieval or e.linear_probe))


def compile_eval_encoder(config, devices, platform: str):
    """The image encoder that evaluation runs during training (evaluate/encode.py), at
    eval.batch_size: -> its compiled executable (its memory adds to the resident train state)."""
    import jax
    import numpy as np
    from synthclip_jax import sharding
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.train.state import make_train_setup

    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    encoder = Encoder(setup.graphdef, mesh, config.eval.batch_size, config.mesh.rules,
                      config.data.mean, config.data.std)
    s = config.data.image_size
    images = jax.ShapeDtypeStruct((encoder.batch_size, s, s, 3), np.uint8,
                                  sharding=encoder.sharding)
    lowered = encoder._image.lower(setup.abstract_state["params"], images)
    return compile_lowered(lowered, platform)[0]


def add_neighbour_search(row: dict, config, devices, target) -> None:
    """SimCLIP's cluster batches (data.clusters) search the embedded records' neighbours on the
    training mesh between steps; the bank's size is the dataset's (compile.num_records)."""
    from synthclip_jax import sharding
    from synthclip_jax.data import neighbours
    from synthclip_jax.data.clusters import neighbours_needed

    c = config.data.clusters
    if not config.compile.num_records:
        row["neighbour_search_skipped"] = ("not compiled: set compile.num_records to the "
                                           "dataset's record count")
        return
    n = config.compile.num_records
    k = min(neighbours_needed(config.batch_size, 1.0, c.cluster_size, c.neighborhood), n)
    mesh = sharding.make_mesh(config.mesh, devices)
    start = time.perf_counter()
    try:
        executable, rows, chunk = neighbours.compile_search(
            mesh, n, config.model.embed_dim, k,
            lambda lowered: compile_lowered(lowered, target.platform)[0])
    except Exception as error:  # XlaRuntimeError
        if target.platform != "cuda" or "CUDA" not in str(error):
            raise
        # XLA's GPU top_k loads the CUDA runtime while compiling: not on a host without one
        row["neighbour_search_skipped"] = ("not compiled: the GPU compiler needs the CUDA "
                                           "runtime for top_k (compile it for a TPU target, "
                                           "or on a GPU host)")
        return
    report.add_neighbour_search(row, executable, target, num_records=n, k=k, query_chunk=chunk,
                                rows_per_device=rows,
                                compile_seconds=time.perf_counter() - start)


def out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def with_batch(config, per_device: int, shards: int):
    c = config.copy_and_resolve_references()
    c.batch_size = per_device * shards * config.train.grad_accum_steps
    return c


def try_compile(config, devices, target):
    """-> (report dict, Compiled or None); an out-of-memory compile is a report that does
    not fit."""
    try:
        compiled = compile_step(config, devices, target.platform)
    except Exception as error:  # XlaRuntimeError: the TPU compiler refuses what cannot fit
        if not out_of_memory(error):
            raise
        from synthclip_jax import sharding
        mesh = sharding.make_mesh(config.mesh, devices)
        shape = {k: int(v) for k, v in mesh.shape.items()}
        return report.refused_by_compiler(config, target, shape, str(error)), None
    return report.build(config, target, compiled), compiled


def largest_batch(config, devices, target, shards: int, limit: int) -> int:
    """The largest per-device batch <= limit whose step fits (0 if not even 1), by bisection;
    a per-device batch of the step without accumulation, i.e. per micro-batch x accumulation."""
    def fits(b):
        row, _ = try_compile(with_batch(config, b, shards), devices, target)
        print(f"  per-device batch {b}: {'fits' if row['fits'] else 'does not fit'} "
              f"({row['memory']['total_gib']:.2f} GiB)", flush=True)
        return row["fits"]

    if fits(limit):
        return limit
    low, high = 0, limit  # fits(low) (0 trivially), not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def run(config, workdir) -> int:
    """Compiles `config` for `config.compile.target`; prints the table, writes the report;
    returns the exit status."""
    target = parse(config.compile.target, config.compile.num_slices)
    if line := missing_library(target):
        print(line, file=sys.stderr, flush=True)
        return MISSING_EXIT
    # The CUDA plugin offers its topology only on a CPU-platform JAX (with JAX_PLATFORMS unset
    # it tries to start a GPU and fails without one).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    if not jax.config.jax_platforms:  # this host compiles (the target's devices are
        jax.config.update("jax_platforms", "cpu")  # descriptions): no TPU/GPU backend start
    devices = target_devices(target)
    row, compiled = try_compile(config, devices, target)
    if compiled is not None and evaluates(config):
        report.add_eval(row, compile_eval_encoder(config, devices, target.platform), target)
    if compiled is not None and config.data.clusters.enabled:
        add_neighbour_search(row, config, devices, target)
    if config.compile.max_batch:
        from synthclip_jax import sharding
        shards = sharding.batch_shards(sharding.make_mesh(config.mesh, devices))
        print(f"searching the largest per-device batch <= {config.compile.max_batch}:")
        row["max_batch_per_device"] = largest_batch(config, devices, target, shards,
                                                    config.compile.max_batch)
    out = config.compile.out or os.path.join(workdir or ".", "compile_report.json")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(row, f, indent=1)
    print(report.table(row), flush=True)
    print(f"report: {out}", flush=True)
    if not row["fits"]:
        print(report.refusal(row), file=sys.stderr, flush=True)
        return 1
    return 0


def main_mode(config, workdir) -> int:
    """main.py's --mode=compile: a missing `compile.target` is a bad config (exit 2)."""
    if not config.compile.target:
        raise ConfigError("compile.target", "--mode=compile needs --config.compile.target "
                          "(e.g. v5e-64, v5p-128, h100:1x8)")
    return run(config, workdir)
