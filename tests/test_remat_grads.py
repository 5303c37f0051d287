"""Rematerialisation changes memory, never values: a tiny transformer's gradients (with respect
to its input and every parameter) are the same under each remat policy, and equal the
forward-mode directional derivative (jax.jvp: no residuals saved, so no remat involved), the
independent reference. The LayerNorm, activation and attention softmax recomputed in the
backward pass in every policy (models/layers.py) are covered the same way."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synthclip_jax.models import layers

WIDTH, DEPTH, HEADS, BATCH, SEQ = 16, 2, 2, 2, 5


def loss_and_grads(policy: str, causal: bool, mask):
    model = layers.Transformer(WIDTH, DEPTH, HEADS, 4.0, eps=1e-5, act=layers.ACTIVATIONS["gelu"],
                               dtype=jnp.float32, remat=policy, rngs=nnx.Rngs(0), attention="xla")
    graphdef, params = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (BATCH, SEQ, WIDTH))
    weights = jax.random.normal(jax.random.key(2), (BATCH, SEQ, WIDTH))

    def loss(x, params):
        return jnp.sum(nnx.merge(graphdef, params)(x, causal, mask) * weights)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, params)
    return loss, (x, params), value, grads


def test_gradients_equal_across_policies_and_forward_mode():
    causal, mask = True, None  # the text towers' path (the image towers' differs in no remat)
    loss, args, value, grads = loss_and_grads("none", causal, mask)
    leaves = jax.tree.leaves(grads)
    for policy in ("dots", "full"):
        _, _, other_value, other = loss_and_grads(policy, causal, mask)
        np.testing.assert_allclose(other_value, value, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(other), leaves):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # <grad, v> against the jvp along a random direction v (per argument)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(args))))
    direction = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype), args)
    _, along = jax.jvp(lambda x, p: loss(x, p), args, direction)
    dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(dot, along, rtol=1e-4)
