"""The train step: one pure function of (state, batch), jitted with explicit shardings.

Gradient accumulation splits the batch into `train.grad_accum_steps` micro-batches, one at a
time through the towers, so activation memory is that of one micro-batch. With
`train.accum_negatives='full'` (default) the loss and gradients are those of the whole batch:
every micro-batch's features are computed first without gradients, the contrastive loss and its
gradient w.r.t. the features are taken over the whole batch, and each micro-batch then
backpropagates its rows of that gradient through the towers (OpenCLIP's `--accum-freq` feature
cache, in GradCache form; one extra forward pass per micro-batch). With 'micro' each micro-batch
is its own contrastive batch and the gradients are averaged (cheaper; fewer negatives).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synthclip_jax import losses, sharding
from synthclip_jax.image_normalize import normalize
from synthclip_jax.choices import ACCUM_NEGATIVES
from synthclip_jax.train.clips_loss import make_clips_loss
from synthclip_jax.train.optimizer import make_schedule


def make_train_step(config, setup, mesh):
    loss_fn = losses.make_contrastive_loss(config.loss.name, mesh,
                                           label_smoothing=config.loss.label_smoothing,
                                           softmax_bias=config.loss.softmax_bias)
    schedule = make_schedule(config)
    accum = config.train.grad_accum_steps
    scale_max = config.model.logit_scale_max
    micro_sharding = sharding.micro_batch_sharding(mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    if config.train.accum_negatives not in ACCUM_NEGATIVES:
        raise ValueError(f"train.accum_negatives={config.train.accum_negatives!r}; "
                         f"expected one of {ACCUM_NEGATIVES}")

    def model_of(params):
        return nnx.merge(setup.graphdef, params)

    def outputs_of(params, batch):  # uint8 pixels are normalised here, on the device
        images = normalize(batch["image"], config.data.mean, config.data.std)
        return model_of(params)(images, batch["text"])

    def loss_of(params, batch):
        return loss_fn(outputs_of(params, batch))

    grad_of = jax.value_and_grad(loss_of)
    # CLIPS (train/clips_loss.py; grad_accum_steps is 1, config_check): loss and its parts
    clips_loss = make_clips_loss(config, mesh)
    clips_grad_of = clips_loss and jax.value_and_grad(
        lambda params, batch: clips_loss(model_of(params), batch), has_aux=True)

    def split(x):  # micro-batch m = rows m, m+accum, ...: every device keeps its own rows
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def merge(x):  # the inverse of `split`: back to the batch's row order and sharding
        x = x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
        return jax.lax.with_sharding_constraint(x, batch_sharding)

    def micro_negatives_grads(params, micro):
        def add(carry, batch):
            return jax.tree.map(jnp.add, carry, grad_of(params, batch)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add, zeros, micro)
        return jax.tree.map(lambda x: x / accum, total)

    def full_negatives_grads(params, micro):
        def features(_, batch):
            outputs = outputs_of(params, batch)
            return None, (outputs.image, outputs.text)

        _, (image, text) = jax.lax.scan(features, None, micro)
        # The temperature and bias enter the loss directly, not through the towers: their
        # gradient is the whole-batch loss's, taken once through the model's own accessor.
        scalars, scalars_vjp = jax.vjp(lambda p: model_of(p).contrastive_scalars(), params)
        loss, d = jax.value_and_grad(loss_fn)(
            losses.ContrastiveOutputs(merge(image), merge(text), *scalars))
        (grads,) = scalars_vjp((d.logit_scale, d.logit_bias))
        zero = jnp.zeros((), jnp.float32)

        def backprop(grads, xs):
            batch, d_img, d_txt = xs
            _, vjp = jax.vjp(lambda p: outputs_of(p, batch), params)
            (g,) = vjp(losses.ContrastiveOutputs(d_img, d_txt, zero, zero))
            return jax.tree.map(jnp.add, grads, g), None

        grads, _ = jax.lax.scan(backprop, grads, (micro, split(d.image), split(d.text)))
        return loss, grads

    def accumulated_grads(params, batch):
        if accum == 1:
            return grad_of(params, batch)
        micro = jax.tree.map(split, batch)
        if config.train.accum_negatives == "full":
            return full_negatives_grads(params, micro)
        return micro_negatives_grads(params, micro)

    def train_step(state, batch):
        params = state["params"]
        parts = {}
        with sharding.compute_layout(mesh, config.mesh.rules):
            if clips_loss is None:
                loss, grads = accumulated_grads(params, batch)
            else:
                (loss, parts), grads = clips_grad_of(params, batch)
        params, opt_state, grad_norm = setup.optimizer.apply(params, grads, state["opt_state"])
        model = model_of(params)
        model.clamp_logit_scale(scale_max)
        params = nnx.to_pure_dict(nnx.state(model))
        logit_scale, logit_bias = model.contrastive_scalars()
        metrics = {
            "loss": loss,
            "lr": schedule(state["step"]),
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(params),
            "logit_scale": jnp.exp(logit_scale),
            "nonfinite_in_a_row": opt_state.nonfinite_in_a_row,
            "nonfinite_total": opt_state.nonfinite_total,
            **parts,
        }
        if model.has_logit_bias:
            metrics["logit_bias"] = logit_bias
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    rep = sharding.replicated(mesh)
    return jax.jit(train_step,
                   in_shardings=(setup.state_shardings, batch_sharding),
                   out_shardings=(setup.state_shardings, rep),
                   donate_argnums=0)

