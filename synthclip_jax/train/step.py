"""The train step: one pure function of (state, batch), jitted with explicit shardings.

Gradient accumulation runs `train.grad_accum_steps` micro-batches in a `lax.scan` and averages
their gradients; the contrastive negatives of each micro-batch are that micro-batch's examples
(as big_vision/optax-style accumulation; OpenCLIP's feature cache is not reproduced).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from synthclip_jax import losses, sharding
from synthclip_jax.train.optimizer import make_schedule


def make_train_step(config, setup, mesh):
    loss_fn = losses.make_contrastive_loss(config.loss.name, mesh)
    schedule = make_schedule(config)
    accum = config.train.grad_accum_steps
    scale_max = config.model.logit_scale_max
    micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

    def loss_of(params, batch):
        image_features, text_features, logit_scale, logit_bias = nnx.merge(
            setup.graphdef, params)(batch["image"], batch["text"])
        return loss_fn(image_features, text_features, logit_scale, logit_bias)

    grad_of = jax.value_and_grad(loss_of)

    def accumulated_grads(params, batch):
        if accum == 1:
            return grad_of(params, batch)

        def split(x):  # micro-batch m = rows m, m+accum, ...: every device keeps its own rows
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, micro_sharding)

        def add(carry, micro):
            loss, grads = grad_of(params, micro)
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add, zeros, jax.tree.map(split, batch))
        return jax.tree.map(lambda x: x / accum, total)

    def train_step(state, batch):
        params = state["params"]
        loss, grads = accumulated_grads(params, batch)
        params, opt_state, grad_norm = setup.optimizer.apply(params, grads, state["opt_state"])
        # The temperature is clamped after every update, as CLIP/OpenCLIP (at most 100).
        params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, scale_max)
        metrics = {
            "loss": loss,
            "lr": schedule(state["step"]),
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(params),
            "logit_scale": jnp.exp(params["logit_scale"]),
            "nonfinite_in_a_row": opt_state.nonfinite_in_a_row,
            "nonfinite_total": opt_state.nonfinite_total,
        }
        if "logit_bias" in params:
            metrics["logit_bias"] = params["logit_bias"]
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    rep = sharding.replicated(mesh)
    return jax.jit(train_step,
                   in_shardings=(setup.state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(setup.state_shardings, rep),
                   donate_argnums=0)

