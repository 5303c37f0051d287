"""compile_report.json: per-device memory against the chip's, FLOPs, XLA's time estimate,
collectives; the printed table; the one-line refusal when the step does not fit.

Per device, from `compiled.memory_analysis()`: arguments (parameters + optimizer state + this
device's batch), outputs, temporaries (activations kept for the backward pass, gradients,
workspace), generated code; total = arguments + outputs - aliased (the donated state) +
temporaries + code. FLOPs per device from the compiled HLO (hlo_stats.py: loops multiplied out)
next to model_flops.py's analytic count. XLA's time estimate (TPU `optimal_seconds`) counts
each loop body once like its FLOPs; it is scaled here by the ratio of the multiplied-out to the
once-counted matmul FLOPs, and reported as an estimate only.
"""
import math

from synthclip_jax.aot import hlo_stats
from synthclip_jax.aot.targets import GIB
from synthclip_jax.models.layers import remat_policy

GEMM_NOTE = "estimate: XLA's optimal_seconds x (loop-multiplied / once-counted matmul FLOPs)"
ROOFLINE_NOTE = ("roofline estimate: max(FLOPs / peak bf16, HBM bytes / bandwidth) per device, "
                 "an upper bound on throughput")


def _settings(config, mesh_shape: dict) -> dict:
    return {"mesh": mesh_shape, "batch_size": config.batch_size,
            "grad_accum_steps": config.train.grad_accum_steps, "dtype": config.model.dtype,
            "remat": config.model.remat, "remat_policy": config.model.remat_policy,
            "loss": config.loss.name}


def per_device_batch(config, mesh_shape: dict) -> int:
    return config.batch_size // max(mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1), 1)


def model_flops_per_device(config, devices: int):
    """model_flops.py's analytic count / devices, or None where it does not apply (ResNet,
    the CLIPS captioner: their FLOPs are not in that formula)."""
    from synthclip_jax.model_flops import step_flops
    if config.model.image.tower != "vit" or config.model.captioner.enabled:
        return None
    return step_flops(config) / devices


def build(config, target, compiled) -> dict:
    ex = compiled.executable
    mem = ex.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    usable = target.usable_bytes
    mesh_shape = {k: int(v) for k, v in compiled.mesh.shape.items()}
    stats = hlo_stats.analyze(ex.as_text())
    devices = target.num_devices
    row = {
        "target": target.name, "platform": target.platform, "chip": target.chip.kind,
        "devices": devices, "topology": target.topology, "num_slices": target.num_slices,
        "settings": _settings(config, mesh_shape),
        "per_device_batch": per_device_batch(config, mesh_shape),
        "compile_seconds": round(compiled.seconds, 2),
        "compiler_options": compiled.compiler_options,
        "memory": {
            "arguments_gib": mem.argument_size_in_bytes / GIB,
            "outputs_gib": mem.output_size_in_bytes / GIB,
            "aliased_gib": mem.alias_size_in_bytes / GIB,
            "temporaries_gib": mem.temp_size_in_bytes / GIB,
            "generated_code_gib": mem.generated_code_size_in_bytes / GIB,
            "total_gib": total / GIB,
            "chip_gib": target.chip.hbm_bytes / GIB,
            "usable_gib": usable / GIB,
            "headroom_gib": (usable - total) / GIB,
        },
        "fits": total <= usable,
        "flops_per_device": stats.flops,
        "model_flops_per_device": model_flops_per_device(config, devices),
        "collectives": hlo_stats.collective_summary(stats),
        "estimate": estimate(config, target, ex, stats, mesh_shape),
        "roofline": roofline(config, target, stats, mesh_shape),
    }
    return row


def between_steps(row: dict, executable, target, own_arguments: bool) -> dict:
    """Memory of a program run between steps while the train state (the step's arguments)
    stays in memory: its temporaries and outputs, and its arguments when they are not that
    state (`own_arguments`), come on top of it."""
    mem = executable.memory_analysis()
    own = mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.generated_code_size_in_bytes
    if own_arguments:
        own += mem.argument_size_in_bytes
    during = row["memory"]["arguments_gib"] + own / GIB
    return {"temporaries_gib": mem.temp_size_in_bytes / GIB,
            "arguments_gib": mem.argument_size_in_bytes / GIB if own_arguments else 0.0,
            "total_with_train_state_gib": during, "fits": during <= target.usable_bytes / GIB}


def add_eval(row: dict, executable, target) -> None:
    """The evaluation image encoder (its arguments are the train state's parameters)."""
    row["eval_encoder"] = between_steps(row, executable, target, own_arguments=False)
    row["fits"] = row["fits"] and row["eval_encoder"]["fits"]


def add_neighbour_search(row: dict, executable, target, **plan) -> None:
    """SimCLIP's neighbour search over the embedded records (data/neighbours.py): one query
    chunk against the bank's row block on each device."""
    row["neighbour_search"] = {**plan, **between_steps(row, executable, target,
                                                        own_arguments=True)}
    row["fits"] = row["fits"] and row["neighbour_search"]["fits"]


def estimate(config, target, executable, stats, mesh_shape) -> dict | None:
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    seconds = (cost or {}).get("optimal_seconds")
    if not seconds or seconds <= 0 or not stats.flops_once:
        return None  # GPU: no estimate without a device; TPU: often negative (none)
    seconds *= stats.flops / stats.flops_once
    samples = per_device_batch(config, mesh_shape) / seconds
    model = model_flops_per_device(config, target.num_devices)
    mfu = model / seconds / (target.chip.peak_tflops * 1e12) if model else None
    return {"step_seconds": seconds, "samples_per_sec_per_chip": samples, "mfu": mfu,
            "note": GEMM_NOTE}


def roofline(config, target, stats, mesh_shape) -> dict:
    """A lower bound on the step time per device: max(FLOPs / peak, HBM bytes / bandwidth),
    from the compiled HLO (hlo_stats: matmul FLOPs and unfused HBM traffic, loops multiplied
    out), i.e. perfect overlap of compute and memory and no collectives' cost; its samples/s
    and MFU are therefore upper bounds. MFU counts model FLOPs (model_flops.py; the compiled
    FLOPs where that formula does not apply), so recomputation lowers it."""
    compute = stats.flops / (target.chip.peak_tflops * 1e12)
    memory = stats.bytes_accessed / (target.chip.hbm_gbps * 1e9)
    seconds = max(compute, memory, 1e-12)
    model = model_flops_per_device(config, target.num_devices) or stats.flops
    return {"step_seconds": seconds, "compute_seconds": compute, "memory_seconds": memory,
            "bound": "compute" if compute >= memory else "HBM bandwidth",
            "hbm_bytes": stats.bytes_accessed,
            "samples_per_sec_per_chip": per_device_batch(config, mesh_shape) / seconds,
            "mfu": model / seconds / (target.chip.peak_tflops * 1e12),
            "note": ROOFLINE_NOTE}


def refused_by_compiler(config, target, mesh_shape: dict, message: str) -> dict:
    """The compiler itself refused (TPU: out of memory while compiling); its message names the
    temporaries it needed ("HLO temporaries (23.35G) exceeds available HBM (15.75G)")."""
    import re
    found = re.search(r"temporaries \(([\d.]+)([GMK])\)", message)
    scale = {"G": 1, "M": 1 / 1024, "K": 1 / 1024 ** 2}
    temps = float(found[1]) * scale[found[2]] if found else None
    return {"target": target.name, "platform": target.platform, "chip": target.chip.kind,
            "devices": target.num_devices, "topology": target.topology,
            "num_slices": target.num_slices, "settings": _settings(config, mesh_shape),
            "per_device_batch": per_device_batch(config, mesh_shape),
            "memory": {"temporaries_gib": temps, "total_gib": temps if temps else float("nan"),
                       "chip_gib": target.chip.hbm_bytes / GIB,
                       "usable_gib": target.usable_bytes / GIB},
            "fits": False, "compiler_error": message.splitlines()[0][:500]}


def suggestions(row: dict) -> list:
    """What would cut the per-device memory: remat, FSDP, accumulation (largest first)."""
    s, mem = row["settings"], row["memory"]
    out = []
    if remat_policy(s["remat"], s["remat_policy"]) != "full":
        out.append("--config.model.remat=True" if s["remat_policy"] == "auto"
                   else "--config.model.remat_policy=full")
    mesh = s.get("mesh") or {}
    if mesh.get("fsdp", 1) == 1 and row["devices"] > 1:
        out.append("--config.mesh.data=1 --config.mesh.fsdp=-1")
    temps = mem.get("temporaries_gib")
    fixed = (0.0 if "compiler_error" in row else mem["total_gib"] - temps) if temps else None
    batch = row["per_device_batch"]
    if temps and fixed is not None and fixed < mem["usable_gib"] and batch > 1:
        accum = s["grad_accum_steps"] * math.ceil(temps / (mem["usable_gib"] - fixed))
        while batch % (accum // s["grad_accum_steps"]) and accum < batch * s["grad_accum_steps"]:
            accum += s["grad_accum_steps"]
        out.append(f"--config.train.grad_accum_steps={accum}")
    elif batch > 1:
        out.append(f"a per-device batch below {batch}")
    return out


def refusal(row: dict) -> str:
    mem = row["memory"]
    mesh = row["settings"].get("mesh") or {}
    mesh_text = " ".join(f"{k}={v}" for k, v in mesh.items()) or "as configured"
    need = (f"{mem['total_gib']:.2f} GiB" if mem.get("temporaries_gib") else "more")
    if "compiler_error" in row and mem.get("temporaries_gib"):
        need = f"{mem['temporaries_gib']:.2f} GiB of temporaries alone"
    return (f"compile: does not fit on {row['target']}: {need} per device > "
            f"{mem['usable_gib']:.2f} GiB usable of {mem['chip_gib']:.2f} at "
            f"{row['per_device_batch']} examples per device (mesh {mesh_text}, "
            f"grad_accum_steps={row['settings']['grad_accum_steps']}, "
            f"remat={row['settings']['remat']}); try {' or '.join(suggestions(row))}")


def _gib(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:8.2f} GiB"


def table(row: dict) -> str:
    mem = row["memory"]
    lines = [f"compile report: {row['target']} ({row['devices']} x {row['chip']}, topology "
             f"{row['topology']}), mesh {row['settings'].get('mesh')}, "
             f"{row['per_device_batch']} examples per device"]
    if "compiler_error" in row:
        lines.append(f"  compiler refused: {row['compiler_error']}")
    for key in ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total"):
        if f"{key}_gib" in mem:
            lines.append(f"  {key.replace('_', ' '):<16}{_gib(mem[key + '_gib'])}")
    lines.append(f"  {'chip (usable)':<16}{_gib(mem['chip_gib'])} ({mem['usable_gib']:.2f})")
    if "headroom_gib" in mem:
        lines.append(f"  {'headroom':<16}{_gib(mem['headroom_gib'])}   "
                     f"{'fits' if row['fits'] else 'DOES NOT FIT'}")
    if "flops_per_device" in row:
        model = row["model_flops_per_device"]
        ratio = f" (analytic {model / 1e9:.4g} GFLOP, x{row['flops_per_device'] / model:.3f})" \
            if model else ""
        lines.append(f"  {'FLOPs/device':<16}{row['flops_per_device'] / 1e9:8.4g} GFLOP{ratio}")
        lines.append(f"  {'compile':<16}{row['compile_seconds']:8.1f} s"
                     + (f" (with {row['compiler_options']})" if row["compiler_options"] else ""))
    est = row.get("estimate")
    if est is None and "flops_per_device" in row:
        why = ("without a device a GPU compile never does" if row.get("platform") == "cuda"
               else "libtpu often gives none, or a negative one")
        lines.append(f"  {'estimate':<16}none (the compiler gave no time estimate for this "
                     f"step; {why})")
    if est:
        mfu = f", MFU {est['mfu']:.1%}" if est["mfu"] is not None else ""
        lines.append(f"  {'estimate':<16}{est['step_seconds'] * 1e3:8.1f} ms/step, "
                     f"{est['samples_per_sec_per_chip']:.1f} samples/s/chip{mfu} ({est['note']})")
    roof = row.get("roofline")
    if roof:
        lines.append(f"  {'roofline':<16}{roof['step_seconds'] * 1e3:8.1f} ms/step "
                     f"({roof['bound']}-bound: compute {roof['compute_seconds'] * 1e3:.1f} ms, "
                     f"HBM {roof['hbm_bytes'] / 1e9:.1f} GB in {roof['memory_seconds'] * 1e3:.1f} "
                     f"ms), {roof['samples_per_sec_per_chip']:.1f} samples/s/chip, MFU "
                     f"{roof['mfu']:.1%} (roofline estimate: an upper bound)")
    coll = row.get("collectives")
    if coll:
        for loop in coll["loops"]:
            ops = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                            for k, v in loop["layer_ops"].items()) or "none"
            if loop["ops"] != loop["layer_ops"]:
                ops += " (+ the loss's, overlapped)"
            lines.append(f"  loop {loop['direction']:<8} x{loop['trips']:<4} per iteration: "
                         f"{ops}")
        ops = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                        for k, v in coll["outside_loops"].items()) or "none"
        lines.append(f"  outside loops: {ops}; "
                     f"{coll['bytes_per_step'] / 2**20:.1f} MiB of collectives per step")
    if "eval_encoder" in row:
        ev = row["eval_encoder"]
        lines.append(f"  eval encoder: {ev['temporaries_gib']:.2f} GiB temporaries, "
                     f"{ev['total_with_train_state_gib']:.2f} GiB with the train state "
                     f"({'fits' if ev['fits'] else 'DOES NOT FIT'})")
    if "neighbour_search" in row:
        ns = row["neighbour_search"]
        lines.append(f"  neighbour search ({ns['num_records']} records, k={ns['k']}, chunks of "
                     f"{ns['query_chunk']}): {ns['arguments_gib']:.2f} GiB bank and queries, "
                     f"{ns['temporaries_gib']:.2f} GiB temporaries, "
                     f"{ns['total_with_train_state_gib']:.2f} GiB with the train state "
                     f"({'fits' if ns['fits'] else 'DOES NOT FIT'})")
    elif row.get("neighbour_search_skipped"):
        lines.append(f"  neighbour search: {row['neighbour_search_skipped']}")
    if "max_batch_per_device" in row:
        lines.append(f"  largest per-device batch that fits: {row['max_batch_per_device']}")
    return "\n".join(lines)
