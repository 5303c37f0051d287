"""Multi-process (multi-host) start-up: `maybe_initialize()` before any other JAX call.

One JAX process runs per host (TPU VM worker, GPU node) or per GPU; they find each other through
`jax.distributed.initialize`. `maybe_initialize()` decides whether this is such a run:

  * explicit: `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES=N`, `JAX_PROCESS_ID=i`
    (and optionally `JAX_LOCAL_DEVICE_IDS=0,1,...`, the GPUs this process drives) on every
    process; the plain recipe for GPU nodes without a scheduler, and how the tests run several
    CPU processes on one machine;
  * SLURM (`srun`, more than one task): JAX reads SLURM_* itself (coordinator = first node of the
    step, port derived from the job id or `JAX_COORDINATOR_PORT`). With one task per *node*,
    set `JAX_LOCAL_DEVICE_IDS` (e.g. 0,1,2,3,4,5,6,7): JAX otherwise gives each SLURM task only
    the GPU numbered SLURM_LOCALID;
  * Open MPI (`mpirun`, more than one rank): auto-detected by JAX likewise;
  * Cloud TPU VM: auto-detected from the TPU metadata server (all workers of a pod slice; on a
    single-host slice it is a 1-process run, which is harmless);
  * `SYNTHCLIP_DISTRIBUTED=1` forces `jax.distributed.initialize()` with JAX's auto-detection
    (e.g. an environment JAX knows but this module does not); `SYNTHCLIP_DISTRIBUTED=0` turns
    all of this off.

Otherwise (one process on one machine) it does nothing. On CPU, cross-process collectives need
an implementation; JAX >= 0.5 defaults `jax_cpu_collectives_implementation` to 'gloo' (bundled
with jaxlib), so nothing needs setting; `maybe_initialize` sets it to 'gloo' only if it is unset.
"""
import glob
import os

from absl import logging

FORCE = "SYNTHCLIP_DISTRIBUTED"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_GOOGLE_PCI_VENDOR = "0x1ae0"
# TPU v2/v3, (unnamed), v4, v5p, v5e, v6e, 7x: the ids JAX 0.10's hardware_utils knows.
_TPU_PCI_DEVICE_IDS = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _int_env(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS is set, so {name} must be set too "
                         "(JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 on every process)")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """TPU chips on the PCI bus, without starting any backend (JAX has no public call for this;
    its private `hardware_utils` does the same scan). A chip newer than `_TPU_PCI_DEVICE_IDS` is
    missed: set SYNTHCLIP_DISTRIBUTED=1 there."""
    if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return False
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() != _GOOGLE_PCI_VENDOR:
                    continue
            # Google's vendor id also covers its virtual NIC (gVNIC): check the device id.
            with open(os.path.join(os.path.dirname(vendor), "device")) as f:
                if f.read().strip() in _TPU_PCI_DEVICE_IDS:
                    return True
        except OSError:
            pass
    return False


def detect() -> tuple[str | None, dict]:
    """(how, kwargs for jax.distributed.initialize), or (None, {}) for a single-process run."""
    env = os.environ
    force = env.get(FORCE, "").strip().lower()
    if force in ("0", "false", "off", "no"):
        return None, {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        num, pid = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
        if not 0 <= pid < num:
            raise ValueError(f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num})")
        # JAX reads JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS itself; passing all of
        # address, count and id skips its cluster auto-detection (unless local ids are unset,
        # where the SLURM/MPI detectors would only fill in local_device_ids: switch that off).
        return "env", dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                           num_processes=num, process_id=pid,
                           cluster_detection_method="deactivate")
    if force in ("1", "true", "on", "yes"):
        return "forced", {}
    if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm", {}
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi", {}
    if _on_cloud_tpu_vm():
        return "tpu", {}
    return None, {}


def maybe_initialize() -> bool:
    """Calls `jax.distributed.initialize` when this is a multi-process run (see the module doc);
    returns whether the distributed runtime is up. Call it first, before any JAX computation or
    `jax.devices()`; calling it again is a no-op."""
    import jax

    if jax.distributed.is_initialized():
        return True
    how, kwargs = detect()
    if how is None:
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("jax.distributed.initialize (%s) %s", how,
                 {k: v for k, v in kwargs.items() if k != "cluster_detection_method"})
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
