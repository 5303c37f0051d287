"""Tests run on CPU with 8 fake devices, so sharded code paths run here as on a pod.

Every test process of one run (pytest-xdist workers and the CLIs tests spawn) shares one
persistent JAX compilation cache: most tests compile the same tiny steps, and compiling is most
of their time. The cache directory is fresh per run (`.ci/run` makes one and removes it; a bare
`pytest` makes one here and removes it at the end), so no state leaks from one run into the next.
"""
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere. LLVM at -O0: XLA's own passes (fusion, layouts,
# SPMD partitioning) run as always, so what a test checks is compiled the same way; only the
# machine code is less tuned. The tiny programs here spend far longer in LLVM than running
# (a mesh step's compile: 34 s -> 12 s), and the processes tests start inherit the flag.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_OWNER = "SYNTHCLIP_TEST_JAX_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="synthclip-jax-cache-")
    os.environ[_CACHE_OWNER] = str(os.getpid())
# Cache every compile that takes noticeable time; the tiniest ones are cheaper to redo than to
# hash, write and read back.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session, exitstatus):
    # Only the process that made the cache removes it (not an xdist worker that inherited it).
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # xdist's --dist loadfile hands out whole files in collection order: the files holding slow
    # tests go first (longest first, roughly), so that no long file starts last and leaves the
    # other worker idle at the end. Order within a file is kept (a stable sort).
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
