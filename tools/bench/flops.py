"""Analytic model FLOPs of a CLIP train step and the machine's measured matmul peak.

Only matmuls are counted (the usual MFU convention): per matmul 2*M*N*K forward, x3 for forward
+ backward (the backward does two matmuls of the same size per forward matmul, one for the
input gradient and one for the weight gradient). Counted per tower: the patch embedding (image),
q/k/v, attention QK^T and AV (the full S x S square, also for the causal text tower: neither
XLA's nor PyTorch's CPU attention skips the masked half), the output projection, both MLP
matmuls and the final projection; plus the two B x B logit matmuls of the loss. LayerNorm,
softmax, activations, the optimizer and the embedding lookup are not counted.
"""
import time


def tower_forward_flops(batch: int, seq: int, width: int, depth: int, mlp_dim: int,
                        embed_dim: int) -> int:
    per_layer = (2 * seq * width * 3 * width  # q, k, v
                 + 2 * seq * seq * width  # QK^T (all heads together: heads x head_dim = width)
                 + 2 * seq * seq * width  # attention-weighted V
                 + 2 * seq * width * width  # output projection
                 + 2 * 2 * seq * width * mlp_dim)  # c_fc and c_proj
    return batch * (depth * per_layer + 2 * width * embed_dim)  # + the (pooled) projection


def clip_step_flops(*, batch: int, image_size: int, patch: int, vit_width: int, vit_depth: int,
                    text_width: int, text_depth: int, context: int, embed_dim: int,
                    mlp_ratio: float = 4.0) -> dict:
    """-> {'image', 'text', 'loss', 'forward', 'step'} FLOPs (step = 3 x forward)."""
    patches = (image_size // patch) ** 2
    image = (2 * batch * patches * patch * patch * 3 * vit_width
             + tower_forward_flops(batch, patches + 1, vit_width, vit_depth,
                                   int(vit_width * mlp_ratio), embed_dim))
    text = tower_forward_flops(batch, context, text_width, text_depth,
                               int(text_width * mlp_ratio), embed_dim)
    loss = 2 * 2 * batch * batch * embed_dim
    forward = image + text + loss
    return dict(image=image, text=text, loss=loss, forward=forward, step=3 * forward)


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
