"""The machine's measured matmul peak: the MFU denominator. The analytic model FLOPs (the
numerator, which the trainer's `mfu` metric uses too) are synthclip_jax/model_flops.py.
"""
import time


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
