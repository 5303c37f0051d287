"""Pod readiness: the persistent compilation cache and a jax.profiler trace of a few steps.

`compile_cache_dir`: XLA executables are kept on disk (`jax_compilation_cache_dir`), so a
restarted or requeued run, and every host of a pod, loads the step instead of compiling it
again (minutes for a large model on TPU). A relative path lies inside the workdir; "" is off.

`profile_steps=N`: a `jax.profiler` trace of N steps (from the third step of the run, past
compilation and the first-step allocations) written under WORKDIR/profile, for TensorBoard's
profile plugin, XProf or Perfetto.
"""
import jax
from absl import logging
from etils import epath


def enable_compile_cache(cache_dir: str, workdir) -> str | None:
    """Points JAX's persistent compilation cache at `cache_dir` (relative: inside `workdir`);
    returns the path, or None when off."""
    if not cache_dir:
        return None
    path = epath.Path(cache_dir)
    if not str(cache_dir).startswith(("/", "gs://")) and "://" not in str(cache_dir):
        path = epath.Path(workdir) / cache_dir
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    try:  # a cache initialised earlier in this process re-reads the path
        from jax.experimental.compilation_cache import compilation_cache
        compilation_cache.reset_cache()
    except ImportError:  # moved: then only a process that has not compiled yet uses the path
        logging.warning("jax has no compilation_cache.reset_cache; compile_cache_dir applies "
                        "from the next process")
    logging.info("persistent compilation cache: %s", path)
    return str(path)


class StepProfiler:
    """Call `update(step, state)` before each step with the steps done so far."""

    def __init__(self, workdir, start_step: int, steps: int):
        self.dir = str(epath.Path(workdir) / "profile")
        self.first, self.last = start_step + 2, start_step + 2 + steps
        self.steps, self.tracing = steps, False

    def update(self, step: int, state):
        if self.steps <= 0:
            return
        if step == self.first and not self.tracing:
            jax.block_until_ready(state)  # the trace holds the profiled steps alone
            jax.profiler.start_trace(self.dir)
            self.tracing = True
        elif step == self.last and self.tracing:
            self.stop(state)

    def stop(self, state=None):
        if self.tracing:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False
            logging.info("profile of %d steps written to %s", self.steps, self.dir)
