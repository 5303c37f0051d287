"""Analytic model FLOPs of a CLIP train step (synthclip_jax/model_flops.py, which the trainer's
`mfu` metric uses too) and the machine's measured matmul peak.

What is counted: see synthclip_jax/model_flops.py.
"""
import time

from synthclip_jax.model_flops import clip_step_flops  # noqa: F401 (train_step.py's import)


def measure_peak_flops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """Median FLOP/s of a jitted n x n @ n x n jnp.dot on the default JAX device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]
