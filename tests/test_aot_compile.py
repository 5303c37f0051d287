"""--mode=compile: the train step compiled for a 4-chip TPU v5e and an 8-GPU H100 node on this
CPU host (needs the `aot` extra: libtpu, the CUDA plugin; skipped without them).

The FLOPs the report reads from the compiled HLO (loops multiplied out) are checked against
model_flops.py's analytic count; the collectives against what the mesh implies: data
parallelism needs none inside the towers' forward layer loops, FSDP all-gathers each layer's
weights there. Each compile is done once per module (fixtures) to keep CI short. The refusal of
a step that does not fit (exit 1, one line) is tested through the launcher's pre-flight
(tests/test_launch_scripts.py), which runs the same command.
"""
import importlib.util
import json

import jax
import numpy as np
import pytest

from configs.demo_cpu import get_config
from synthclip_jax import sharding
from synthclip_jax.config import check as config_check
from synthclip_jax.aot import run, targets
from synthclip_jax.config.error import ConfigError
from synthclip_jax.model_flops import step_flops

needs = {"tpu": pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                   reason="libtpu not installed (pip install -e '.[aot]')"),
         "gpu": pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is None,
                                   reason="CUDA plugin not installed (pip install -e '.[aot]')")}
TARGETS = {"tpu": "v5e-4", "gpu": "h100:1x8"}


def demo(layout: str, target: str):
    """configs/demo_cpu.py (a small ViT + text tower), two layers: compile time is CI time."""
    c = get_config()
    c.model.image.depth = c.model.text.depth = 2  # (width 32 trips XLA's GPU tiling when it
    # cannot autotune: "Couldn't find output tile sizes"; the demo's 64 compiles)
    c.compile.target = target
    if layout == "fsdp":
        c.mesh.update(data=1, fsdp=-1)
    return c


def compile_report(tmp_path_factory, platform: str, layout: str) -> dict:
    config = demo(layout, TARGETS[platform])
    out = tmp_path_factory.mktemp(f"{platform}_{layout}") / "compile_report.json"
    config.compile.out = str(out)
    assert run.run(config, None) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=[
    pytest.param((platform, layout), marks=needs[platform])
    for platform in ("tpu", "gpu") for layout in ("dp", "fsdp")], ids=lambda p: "-".join(p))
def report(request, tmp_path_factory):
    platform, layout = request.param
    return platform, layout, compile_report(tmp_path_factory, platform, layout)


def test_report_fits_with_the_analytic_flops_and_the_mesh_collectives(report):
    platform, layout, row = report
    devices = 4 if platform == "tpu" else 8
    assert row["devices"] == devices and row["fits"]
    assert row["settings"]["mesh"] == ({"data": devices, "fsdp": 1, "tensor": 1} if layout == "dp"
                                       else {"data": 1, "fsdp": devices, "tensor": 1})
    mem = row["memory"]
    assert 0 < mem["total_gib"] < mem["usable_gib"] and mem["temporaries_gib"] > 0
    # the compiled per-device matmul FLOPs against the analytic count (independent formula)
    analytic = step_flops(demo(layout, "")) / devices
    assert row["flops_per_device"] == pytest.approx(analytic, rel=0.10)
    depth = demo(layout, "").model.image.depth
    forward = [lp for lp in row["collectives"]["loops"]
               if lp["direction"] == "forward" and lp["trips"] == depth]
    assert len(forward) >= 2  # both towers scan their layers
    if layout == "dp":  # weights are whole on every device: nothing to gather per layer
        assert all(not lp["layer_ops"] for lp in forward), forward
    else:  # ZeRO-3: each layer's weights gathered inside the loop
        assert all(lp["layer_ops"].get("all-gather", {}).get("count", 0) >= 1
                   for lp in forward), forward
    if platform == "gpu":
        assert row["estimate"] is None  # no time estimate without a device
    # roofline estimate: the compute side is the FLOPs over the chip's peak; the memory side at
    # least reads and writes the train state once (the optimizer update: outputs = new state)
    roof, chip = row["roofline"], targets.parse(TARGETS[platform]).chip
    assert roof["compute_seconds"] == pytest.approx(
        row["flops_per_device"] / (chip.peak_tflops * 1e12))
    assert roof["hbm_bytes"] >= 2 * mem["outputs_gib"] * targets.GIB
    assert roof["step_seconds"] == max(roof["compute_seconds"], roof["memory_seconds"])
    assert 0 < roof["mfu"] <= 1


# A scanned layer as XLA writes it: a while loop (3 trips) whose fusion slices one layer out of
# a stacked f32[3,4,8] weight and writes one row into a stacked activation in place; one
# operand lives in TPU VMEM (S(1)), which is no HBM traffic.
LOOP_HLO = """
%slice_and_scale (p0: f32[3,4,8], p1: s32[], p2: f32[4,8]) -> f32[4,8] {
  %p0 = f32[3,4,8]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  %ds = f32[1,4,8]{2,1,0} dynamic-slice(%p0, %p1, %c0, %c0), dynamic_slice_sizes={1,4,8}
  %b = f32[4,8]{1,0} bitcast(%ds)
  %p2 = f32[4,8]{1,0:T(8,128)S(1)} parameter(2)
  ROOT %m = f32[4,8]{1,0} multiply(%b, %p2)
}

%body (t: (s32[], f32[3,4,8], f32[4,8], f32[3,4,8])) -> (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) {
  %t = (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %w = f32[3,4,8]{2,1,0} get-tuple-element(%t), index=1
  %x = f32[4,8]{1,0:T(8,128)S(1)} get-tuple-element(%t), index=2
  %acts = f32[3,4,8]{2,1,0} get-tuple-element(%t), index=3
  %f = f32[4,8]{1,0} fusion(%w, %i, %x), kind=kLoop, calls=%slice_and_scale
  %row = f32[1,4,8]{2,1,0} bitcast(%f)
  %z = s32[] constant(0)
  %upd = f32[3,4,8]{2,1,0} dynamic-update-slice(%acts, %row, %i, %z, %z)
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) tuple(%next, %w, %f, %upd)
}

%cond (t: (s32[], f32[3,4,8], f32[4,8], f32[3,4,8])) -> pred[] {
  %t = (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (w: f32[3,4,8], x: f32[4,8]) -> f32[3,4,8] {
  %w = f32[3,4,8]{2,1,0} parameter(0)
  %x = f32[4,8]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %acts0 = f32[3,4,8]{2,1,0} broadcast(f32[] constant(0)), dimensions={}
  %init = (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) tuple(%zero, %w, %x, %acts0)
  %loop = (s32[], f32[3,4,8], f32[4,8], f32[3,4,8]) while(%init), condition=%cond, body=%body
  ROOT %result = f32[3,4,8]{2,1,0} get-tuple-element(%loop), index=3
}
"""


def test_hbm_bytes_count_slices_in_place_updates_and_loops():
    from synthclip_jax.aot import hlo_stats
    layer = 4 * 8 * 4  # one f32[4,8]
    per_trip = (layer + 4 + layer  # the fusion reads one layer's slice and the s32 index (the
                # VMEM operand: nothing) and writes one layer
                + 3 * 4  # the counter's add: two s32 read, one written
                + 2 * layer)  # the in-place update reads and writes one row, not the stack
    entry = 3 * layer  # the broadcast writes the stacked activation once
    stats = hlo_stats.analyze(LOOP_HLO)
    assert stats.bytes_accessed == entry + 3 * per_trip


@needs["tpu"]
def test_two_slices_give_the_hybrid_mesh():
    target = targets.parse("v5e-4", num_slices=2)
    devices = run.target_devices(target)
    assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=2, dcn_fsdp=1), devices)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices[:, 0, 0])
    assert list(slices) == [0] * 4 + [1] * 4  # the DCN part is the outer part of 'data'
    # unset DCN axes on two slices: data parallel over the slices, the same mesh
    auto = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), devices)
    assert (auto.devices == mesh.devices).all()
    # FSDP inside each slice, data parallel across them
    mixed = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1, dcn_data=2, dcn_fsdp=1), devices)
    assert dict(mixed.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(len({d.slice_index for d in row.flat}) == 1 for row in mixed.devices)


@needs["gpu"]
def test_two_gpu_nodes_give_the_hybrid_mesh():
    devices = run.target_devices(targets.parse("h100:2x8"))
    mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1, dcn_data=2, dcn_fsdp=1), devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 1}
    assert [{d.process_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]


def test_dcn_axes_default_to_todays_mesh_and_split_cpu_devices():
    devices = jax.devices()
    plain = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), devices)
    assert (sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1),
                               devices).devices == plain.devices).all()
    two = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1, dcn_data=2, dcn_fsdp=1), devices)
    assert dict(two.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert [d.id for d in two.devices[1, :, 0]] == [4, 5, 6, 7]  # "slice" 1 = devices 4..7
    with pytest.raises(ConfigError, match="dcn_data"):
        sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1, dcn_data=3, dcn_fsdp=1), devices)


@pytest.mark.parametrize("name, topology, chips, bounds", [
    ("v5p-128", "v5:4x4x4", 64, (2, 2, 1)), ("v4-8", "v4:2x2x1", 4, (2, 2, 1)),
    ("v5e-64", "v5e:8x8", 64, (2, 2, 1)), ("v5litepod-8", "v5e:2x4", 8, (2, 4, 1)),
    ("v6e-256", "v6e:16x16", 256, (2, 2, 1))])
def test_tpu_names_map_to_maxtexts_topologies(name, topology, chips, bounds):
    t = targets.parse(name)
    assert (t.topology, t.num_devices, t.chips_per_host_bounds) == (topology, chips, bounds)
    assert targets.parse(name, num_slices=2).num_devices == 2 * chips


def test_gpu_names_and_bad_targets():
    t = targets.parse("h200:4x8")
    assert (t.platform, t.topology, t.num_devices) == ("cuda", "1x4x8", 32)
    assert "device_memory_size: 151397597184" in t.gpu_target_config()
    for bad in ("v5e-12", "h100:1x9", "a100:1x8"):
        config = get_config()
        config.compile.target = bad
        with pytest.raises(ConfigError, match="compile.target"):
            config_check.validate(config, check_paths=False)


def test_compile_mode_without_a_target_is_a_config_error():
    with pytest.raises(ConfigError, match="compile.target"):
        run.main_mode(get_config(), None)


@needs["tpu"]
def test_neighbour_search_compiles_with_the_bank_split_over_the_chips():
    """SimCLIP's neighbour search (data.clusters): the bank's rows split over the 4 chips, the
    replicated query chunk, on top of the train state; skipped, and said so, without a size."""
    config = demo("dp", TARGETS["tpu"])
    config.data.clusters.enabled = True
    target = targets.parse(TARGETS["tpu"])
    devices = run.target_devices(target)
    unsized = {"memory": {"arguments_gib": 1.0}, "fits": True}
    run.add_neighbour_search(unsized, config, devices, target)
    assert "compile.num_records" in unsized["neighbour_search_skipped"]

    config.compile.num_records = n = 10_240  # rows a multiple of 128: no TPU layout padding
    row = {"memory": {"arguments_gib": 1.0}, "fits": True}
    run.add_neighbour_search(row, config, devices, target)
    search = row["neighbour_search"]
    # k: every cluster of 16 sees its whole neighbourhood (data/clusters.py, proportion 1)
    k = config.batch_size + config.data.clusters.cluster_size
    rows = max(-(-n // 4), k)
    chunk = min(4096, (1 << 28) // (4 * rows))
    assert (search["k"], search["rows_per_device"], search["query_chunk"]) == (k, rows, chunk)
    dim = config.model.embed_dim
    assert search["arguments_gib"] * 2**30 == pytest.approx((rows + chunk) * dim * 4)
    assert search["total_with_train_state_gib"] > 1.0 + search["arguments_gib"]
    assert search["fits"] and row["fits"]
