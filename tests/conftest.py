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


# The longest files (summed test time in a CI run, tests/README.md), longest first.
LONGEST_FILES = ("test_data_gen_text.py", "test_train_parallel.py", "test_crash_consistency.py",
                 "test_main_e2e.py", "test_bench.py", "test_resume_process_count.py",
                 "test_multihost.py", "test_seed_cpu_configs.py", "test_resnet_training.py",
                 "test_clips_parallel.py", "test_data_gen_chain.py", "test_captioner.py",
                 "test_device_check.py")


def pytest_configure(config):
    # xdist would otherwise re-sort files by their number of tests, undoing the order below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    # xdist's --dist loadfile hands out whole files in collection order: the longest files go
    # first, then the other files holding slow tests, so that no long file starts last and
    # leaves the other worker idle at the end. Order within a file is kept (a stable sort).
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item):
        name = item.path.name
        longest = LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
        return longest, item.path not in slow_files
    items.sort(key=rank)
