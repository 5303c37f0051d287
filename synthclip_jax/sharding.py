"""Mesh, logical-axis rules and data placement.

One mesh with axes ('data', 'fsdp', 'tensor'). Parameters carry logical axis names
(`logical_axes` metadata on each `nnx.Param`); `mesh.rules` in the config maps each logical name
to mesh axes. With the default rules, pure data parallel, FSDP (ZeRO-3: parameters and optimizer
state sharded over 'fsdp', gathered per layer by XLA) and tensor parallel (heads/mlp/vocab over
'tensor') are only a change of `mesh.data/fsdp/tensor`; a mesh axis of size 1 shards nothing.
The batch is split over ('data', 'fsdp').

Compute layout (ZeRO-3, as big_vision and MaxText do it): the axes that split the batch only
*store* weights. While a step is traced under `compute_layout(mesh, rules)`, the towers call
`constrain` on every weight they read (gathering its batch-axis shards, one layer at a time
inside the scanned blocks; the transpose reduce-scatters the gradient) and on their activations
(batch over ('data', 'fsdp'), heads/mlp over 'tensor' as the rules say: one all-reduce per block
half, as Megatron). Left to itself, XLA's propagation resolved the fsdp-sharded `embed` of the
weights against the fsdp-sharded batch by resharding activations: 4x the temporaries and 2-7x
the step time of data parallelism. Outside `compute_layout` (single-device use, export),
`constrain` does nothing.
"""
import contextlib
import contextvars
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from synthclip_jax.config.axis_rules import BATCH_AXES, DEFAULT_RULES, MESH_AXES  # noqa: F401
from synthclip_jax.config.error import ConfigError



def mesh_shape(mesh_cfg, num_devices: int) -> tuple:
    """(data, fsdp, tensor) sizes from `mesh.*`, with one -1 filled by the remaining devices."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError("mesh", f"mesh {named}: sizes must be positive, "
                          "with at most one -1 (= all remaining devices)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError("mesh", f"mesh {named}: {num_devices} devices are not divisible "
                              f"by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError("mesh", f"mesh {named} needs {math.prod(sizes)} devices, "
                          f"but {num_devices} are available")
    return tuple(sizes)


def _granules(devices) -> tuple:
    """(attribute, count) of the fast-network islands the devices form: TPU slices
    (`slice_index`), else hosts (`process_index`: the nodes of a multi-node GPU job)."""
    slices = {getattr(d, "slice_index", 0) or 0 for d in devices}
    if len(slices) > 1:
        return "slice_index", len(slices)
    return "process_index", len({d.process_index for d in devices})


def dcn_shape(mesh_cfg, devices) -> tuple:
    """(dcn_data, dcn_fsdp, 1): how many slices/nodes the data and fsdp axes span (1 = the
    mesh inside one slice). Unset (both 1) on devices that span several TPU slices: data
    parallel over the slices, the only layout whose per-step DCN traffic is one gradient
    all-reduce."""
    dcn = (int(mesh_cfg.get("dcn_data", 1)), int(mesh_cfg.get("dcn_fsdp", 1)), 1)
    attribute, count = _granules(devices)
    if dcn == (1, 1, 1) and attribute == "slice_index":
        dcn = (count, 1, 1)
    return dcn


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The mesh of `mesh.*`. With `mesh.dcn_data`/`mesh.dcn_fsdp` > 1 (multi-slice TPU,
    multi-node GPU), mesh.data/fsdp/tensor shape one slice or node (-1 fills it) and each mesh
    axis is the slice axis times the DCN axis, laid out by `create_hybrid_device_mesh` (as
    MaxText does) so that only the DCN part of an axis crosses the slow network."""
    devices = jax.devices() if devices is None else devices
    dcn = dcn_shape(mesh_cfg, devices)
    # Auto axes: the step is one jit with explicit in/out shardings and XLA (GSPMD) inserts the
    # collectives; the losses switch to manual per-device code with shard_map.
    axis_types = (AxisType.Auto,) * 3
    if dcn == (1, 1, 1):
        shape = mesh_shape(mesh_cfg, len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    parts = math.prod(dcn)
    if len(devices) % parts:
        raise ConfigError("mesh.dcn_data", f"mesh.dcn_data x mesh.dcn_fsdp = {parts} does not "
                          f"divide the {len(devices)} devices; set them to the number of slices "
                          "or nodes")
    ici = mesh_shape(mesh_cfg, len(devices) // parts)
    return Mesh(hybrid_device_array(ici, dcn, devices), MESH_AXES, axis_types=axis_types)


def hybrid_device_array(ici: tuple, dcn: tuple, devices) -> np.ndarray:
    attribute, count = _granules(devices)
    if count == math.prod(dcn):
        from jax.experimental import mesh_utils
        return mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=attribute == "process_index",
            allow_split_physical_axes=True)
    if count > 1:
        raise ConfigError("mesh.dcn_data", f"mesh.dcn_data x mesh.dcn_fsdp = {math.prod(dcn)}, "
                          f"but the devices form {count} slices/nodes; make them equal")
    # One host of devices with no physical islands (the CPU test devices): the same layout,
    # consecutive devices forming each "slice".
    grid = np.asarray(devices, dtype=object).reshape(*dcn, *ici)
    return grid.transpose(0, 3, 1, 4, 2, 5).reshape([d * i for d, i in zip(dcn, ici)])


def spec_for(logical_axes, rules) -> P:
    rules = dict(rules)
    unknown = [a for a in logical_axes if a is not None and a not in rules]
    if unknown:
        raise ValueError(f"logical axes {unknown} have no entry in mesh.rules {sorted(rules)}")
    return P(*(None if a is None else rules[a] for a in logical_axes))


def _axis_size(mesh: Mesh, mesh_axes) -> int:
    if mesh_axes is None:
        return 1
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return math.prod(mesh.shape[n] for n in names)


# Activation-only logical names: the batch dimension and the sequence (never sharded here).
ACTIVATION_RULES = (("batch", BATCH_AXES), ("seq", None))

_LAYOUT = contextvars.ContextVar("synthclip_jax_compute_layout", default=None)


def compute_spec(logical_axes, rules) -> P:
    """The PartitionSpec a weight or activation has while computing: the rules' mesh axes minus
    the batch axes (which hold weights only at rest), and the batch over the batch axes."""

    def compute_axes(mesh_axes):
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        kept = tuple(n for n in names if n not in BATCH_AXES)
        return kept[0] if len(kept) == 1 else (kept or None)

    spec = spec_for(logical_axes, (*rules, *ACTIVATION_RULES))
    return P(*(BATCH_AXES if a == "batch" else compute_axes(m)
               for a, m in zip(logical_axes, spec)))


@contextlib.contextmanager
def compute_layout(mesh: Mesh, rules):
    """Within this context (while tracing a step), `constrain` places arrays on `mesh`."""
    token = _LAYOUT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def gathers_weights() -> bool:
    """Whether the current compute layout gathers weights (FSDP: a batch axis of size > 1 that
    the rules also use to store weights)."""
    layout = _LAYOUT.get()
    if layout is None:
        return False
    mesh, rules = layout
    storage = {n for _, m in rules for n in ((m,) if isinstance(m, str) else (m or ()))}
    return any(mesh.shape[a] > 1 for a in BATCH_AXES if a in storage)


def constrain(x, logical_axes):
    """Sharding constraint by logical names (see the module docstring); a no-op outside
    `compute_layout`."""
    layout = _LAYOUT.get()
    if layout is None:
        return x
    mesh, rules = layout
    spec = compute_spec(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules):
    """NamedSharding per parameter (pure-dict tree), checking every sharded dim divides."""

    def one(path, variable):
        axes = variable.get_metadata().get("logical_axes")
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if axes is None:
            raise ValueError(f"parameter {name} has no logical_axes annotation")
        spec = spec_for(axes, rules)
        for dim, (size, mesh_axes) in enumerate(zip(variable.shape, spec)):
            n = _axis_size(mesh, mesh_axes)
            if size % n:
                raise ConfigError(
                    "mesh.rules",
                    f"parameter {name} {tuple(variable.shape)}: dim {dim} ({axes[dim]}, size {size}) "
                    f"does not divide over mesh axis {mesh_axes} of size {n}; change the model "
                    "size, the mesh shape or mesh.rules")
        return NamedSharding(mesh, spec)

    tree = jax.tree_util.tree_map_with_path(
        one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def micro_batch_sharding(mesh: Mesh) -> NamedSharding:
    """(micro-batches, rows, ...): each micro-batch split over the batch axes like a batch."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    """Into how many parts a batch is split (mesh.data x mesh.fsdp)."""
    return _axis_size(mesh, BATCH_AXES)


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1):
    shards = batch_shards(mesh)
    if global_batch % (shards * grad_accum_steps):
        raise ConfigError(
            "batch_size",
            f"batch_size={global_batch} must be divisible by the data-parallel shards "
            f"(mesh.data x mesh.fsdp = {shards}) times train.grad_accum_steps={grad_accum_steps}")
    if global_batch % jax.process_count():
        raise ConfigError("batch_size", f"batch_size={global_batch} does not divide over "
                          f"{jax.process_count()} processes")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays sharded over the batch."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
