"""Compile targets: a Cloud TPU accelerator type or a GPU node spec -> what the compiler needs.

jax-free (config_check validates `compile.target` with `parse` before any device work).

TPU names are Cloud TPU accelerator types: `v4-32`, `v5p-128` (the number counts TensorCores,
two per chip), `v5e-64` / `v5litepod-64`, `v6e-256` (the number counts chips). Each maps to
the topology string and host bounds that `jax.experimental.topologies.get_topology_desc` takes,
as MaxText's accelerator_to_spec_map.py maps them. GPU names are `h100:NODESxGPUS` or
`h200:NODESxGPUS` (`h100:1x8` = one 8-GPU node): XLA's GpuTargetConfig of the chip (copied
from XLA's xla/backends/gpu/target_config/specs/, in gpu_target_configs/) and the topology
`1xNODESxGPUS` (partitions x hosts x devices per host).
"""
import dataclasses
import os
import re
from importlib import resources

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str
    hbm_bytes: int  # memory of one chip (one TPU chip, one GPU)
    peak_tflops: float  # dense bf16 TFLOP/s per chip (the MFU denominator)
    hbm_gbps: float  # HBM bandwidth, GB/s per chip (the roofline's memory side)
    usable_fraction: float = 1.0  # of hbm_bytes that a JAX process can use (see GPU below)


# Cloud TPU docs' per-chip HBM, bf16 peak and HBM bandwidth. v5e's 15.75 GiB and v4's 30.75 GiB
# usable are what libtpu's compiler says is available ("exceeds available HBM (30.75G)").
TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275.0, 1228.0, usable_fraction=30.75 / 32),
    "v5e": Chip("TPU v5e", int(15.75 * GIB), 197.0, 819.0),
    "v5p": Chip("TPU v5p", 95 * GIB, 459.0, 2765.0),
    "v6e": Chip("TPU v6e", 32 * GIB, 918.0, 1640.0),
}
# device_memory_size of XLA's target configs; bf16 dense peak and HBM bandwidth of the SXM
# parts (NVIDIA's data sheets). JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75)
# of a GPU's memory and XLA must fit in that.
GPU_CHIPS = {
    "h100": (Chip("NVIDIA H100 SXM", 84942979072, 989.0, 3350.0), "h100_sxm.txtpb"),
    "h200": (Chip("NVIDIA H200", 151397597184, 989.0, 4800.0), "h200.txtpb"),
}
# chips -> torus shape: v4/v5p are 3-D (x, y, z), v5e/v6e 2-D.
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
             2048: (8, 16, 16), 4096: (16, 16, 16)}
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}
TPU_NAME = re.compile(r"^(v4|v5p|v5e|v5litepod|v6e)-(\d+)$")
GPU_NAME = re.compile(r"^(h100|h200):(\d+)x(\d+)$")
EXAMPLES = "v4-32, v5e-64, v5p-128, v6e-256, h100:1x8, h200:4x8"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" | "cuda"
    chip: Chip
    num_devices: int  # over all slices / nodes
    topology: str  # TPU: "v5e:4x4"; GPU: "1x2x8"
    chips_per_host_bounds: tuple = ()  # TPU only
    chip_config_name: str = "default"  # TPU only
    num_slices: int = 1  # TPU slices (DCN); GPU: nodes
    gpu_config_file: str = ""  # GPU only

    @property
    def usable_bytes(self) -> int:
        return int(self.chip.hbm_bytes * self.chip.usable_fraction)

    def gpu_target_config(self) -> str:
        """The text of XLA's GpuTargetConfig proto for this GPU."""
        return (resources.files("synthclip_jax.aot") / "gpu_target_configs"
                / self.gpu_config_file).read_text()


class BadTarget(ValueError):
    pass


def parse(name: str, num_slices: int = 1) -> Target:
    """`compile.target` (+ `compile.num_slices`) -> Target; BadTarget says what is accepted."""
    name = str(name).strip().lower()
    if m := TPU_NAME.match(name):
        return _tpu(name, "v5e" if m[1] == "v5litepod" else m[1], int(m[2]), num_slices)
    if m := GPU_NAME.match(name):
        if num_slices != 1:
            raise BadTarget(f"compile.num_slices={num_slices} is for TPU slices; a GPU target "
                            f"names its nodes itself ({m[1]}:NODESxGPUS)")
        nodes, gpus = int(m[2]), int(m[3])
        if not (nodes >= 1 and 1 <= gpus <= 8):
            raise BadTarget(f"{name!r}: NODES >= 1 and 1 <= GPUS <= 8 per node")
        chip, config_file = GPU_CHIPS[m[1]]
        fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
        return Target(name, "cuda", dataclasses.replace(chip, usable_fraction=fraction),
                      nodes * gpus, f"1x{nodes}x{gpus}", num_slices=nodes,
                      gpu_config_file=config_file)
    raise BadTarget(f"{name!r} is not a Cloud TPU accelerator type or GPU node spec "
                    f"(e.g. {EXAMPLES})")


def _tpu(name: str, generation: str, count: int, num_slices: int) -> Target:
    if num_slices < 1:
        raise BadTarget(f"compile.num_slices={num_slices} must be >= 1")
    three_d = generation in ("v4", "v5p")
    chips = count // 2 if three_d else count  # v4/v5p names count TensorCores
    shapes = SHAPES_3D if three_d else SHAPES_2D
    if chips not in shapes:
        sizes = sorted(c * 2 if three_d else c for c in shapes)
        raise BadTarget(f"{name!r}: no {generation} slice of that size; sizes: "
                        f"{', '.join(map(str, sizes))}")
    shape = shapes[chips]
    if three_d:
        bounds = (2, 2, 1)
    else:  # one host holds 1, 4 or 8 v5e/v6e chips; larger slices have 4 per host
        bounds = {1: (1, 1, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))
    prefix = {"v5p": "v5", "v4": "v4"}.get(generation, generation)
    return Target(name if num_slices == 1 else f"{name} x{num_slices}", "tpu",
                  TPU_CHIPS[generation], chips * num_slices,
                  f"{prefix}:{'x'.join(map(str, shape))}", bounds,
                  "megacore" if three_d else "default", num_slices)

