"""Every mesh costs what data parallelism costs: XLA's per-device memory of the compiled step.

No timing (the shared cores make it noisy; tools/bench/mesh_efficiency.py times it). Same global
batch on 8 fake devices: FSDP (1, 8, 1) and the mixed mesh (2, 2, 2) may hold at most 1.3x the
temporaries of data parallelism (8, 1, 1) plus one gathered weight (FSDP gathers each weight for
compute, the largest being the token table), and FSDP's arguments (parameters, optimizer state,
batch) at most 1/6 of data parallelism's. Before activations were constrained, XLA resharded
them across 'fsdp' instead of gathering weights: 4.2x the temporaries on the demo model.
"""
import jax
import pytest

from tools.bench.mesh_efficiency import compile_step, size_config

DP, FSDP, MIXED = (8, 1, 1), (1, 8, 1), (2, 2, 2)


def largest_layer_weight_bytes(config) -> int:
    """The largest weight one layer gathers: stacked block weights count one layer's slice."""
    from synthclip_jax.models.two_tower import build_model
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(config, 0))))
    sizes = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        stacked = any(getattr(k, "key", None) == "resblocks" for k in path)
        sizes.append(leaf.size // (leaf.shape[0] if stacked else 1) * leaf.dtype.itemsize)
    return max(sizes)


def memory(config, mesh):
    mem = compile_step(config, mesh)[-1].memory_analysis()
    return mem.temp_size_in_bytes, mem.argument_size_in_bytes


@pytest.mark.slow
@pytest.mark.parametrize("size", ["demo", "vit"])
def test_fsdp_and_mixed_meshes_cost_what_data_parallelism_costs(size):
    assert len(jax.devices()) == 8
    config = size_config(size)
    dp_temp, dp_args = memory(config, DP)
    allowed = 1.3 * dp_temp + largest_layer_weight_bytes(config)
    for mesh in (FSDP, MIXED):
        temp, args = memory(config, mesh)
        assert temp <= allowed, (
            f"{size} {mesh}: temp {temp / 2**20:.1f} MiB > 1.3 x DP {dp_temp / 2**20:.1f} MiB "
            f"+ one layer's weights = {allowed / 2**20:.1f} MiB")
        if mesh == FSDP:
            assert args <= dp_args / 6, (args, dp_args)


def computations_with(hlo: str, op: str) -> list:
    """Names of the HLO computations (loop bodies, ENTRY) that contain the collective `op`."""
    names, current = [], None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[0]
        if f" {op}(" in line or f" {op}-start(" in line:
            names.append(current)
    return sorted(set(names))


def test_fsdp_gathers_weights_per_layer_not_whole_stacks():
    """ZeRO-3 inside the scanned blocks: the compiled FSDP step all-gathers one layer's slice in
    the forward loop of each tower and again in its backward loop (not the whole stacked tensors
    up front, nor every layer's gathered copy kept from the forward pass)."""
    config = size_config("vit")
    hlo = compile_step(config, FSDP)[-1].as_text()
    stacked_shape = f"f32[{config.model.image.depth},{config.model.image.width},"
    gathers = [line for line in hlo.splitlines() if " all-gather(" in line]
    assert not any(line.split("=", 1)[1].lstrip().startswith(stacked_shape)
                   for line in gathers if "=" in line), "a whole stacked weight is gathered"
    loops = [name for name in computations_with(hlo, "all-gather") if name != "ENTRY"]
    assert len(loops) >= 4, f"per-layer gathers in {loops}: expected forward and backward loops"
