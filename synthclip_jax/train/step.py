"""The train step: one pure function of (state, batch), jitted with explicit shardings.

Gradient accumulation splits the batch into `train.grad_accum_steps` micro-batches, one at a
time through the towers, so activation memory is that of one micro-batch. With
`train.accum_negatives='full'` (default) the loss and gradients are those of the whole batch:
every micro-batch's features are computed first without gradients, the contrastive loss and its
gradient w.r.t. the features are taken over the whole batch, and each micro-batch then
backpropagates its rows of that gradient through the towers (OpenCLIP's `--accum-freq` feature
cache, in GradCache form; one extra forward pass per micro-batch). With 'micro' each micro-batch
is its own contrastive batch and the gradients are averaged (cheaper; fewer negatives).

BatchNorm (the ResNet tower): the towers run in train mode (`setup.train_graphdef`), each
micro-batch normalised by its own batch statistics (over the whole micro-batch, all devices:
the mean under SPMD jit is global). The running statistics move once per step, by one momentum
update with the mean of the micro-batches' statistics: every micro-batch's forward starts from
the step's old statistics, and the updated statistics are averaged (the update is affine in the
batch statistics, so that average is old * (1 - m) + m * mean of the batch statistics). In
'full' mode the statistics come from the feature pass; the backward pass's recomputation gives
the same ones and is not counted again. A skipped (non-finite) step keeps the old statistics.
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synthclip_jax import losses, sharding
from synthclip_jax.image_normalize import normalize
from synthclip_jax.models.patch_dropout import BATCH_KEY as PATCH_KEEP, with_patch_dropout
from synthclip_jax.config.choices import ACCUM_NEGATIVES
from synthclip_jax.train.classify_loss import make_classify_loss
from synthclip_jax.train import ema
from synthclip_jax.train.clips_loss import make_clips_loss
from synthclip_jax.train.optimizer import make_schedule
from synthclip_jax.train.state import split_params


def make_train_step(config, setup, mesh):
    # train.task='classify': the classifier's logits against the batch's labels, no temperature
    classify = config.train.get("task", "contrastive") == "classify"
    loss_fn = make_classify_loss(config) if classify else losses.make_contrastive_loss(
        config.loss.name, mesh, label_smoothing=config.loss.label_smoothing,
        softmax_bias=config.loss.softmax_bias)
    target = "label" if classify else "text"  # the model's second input
    schedule = make_schedule(config)
    accum = config.train.grad_accum_steps
    scale_max = config.model.logit_scale_max
    micro_sharding = sharding.micro_batch_sharding(mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    if config.train.accum_negatives not in ACCUM_NEGATIVES:
        raise ValueError(f"train.accum_negatives={config.train.accum_negatives!r}; "
                         f"expected one of {ACCUM_NEGATIVES}")

    def model_of(params, stats):  # train mode: BatchNorm normalises by batch statistics
        return nnx.merge(setup.train_graphdef, params, stats)

    def outputs_of(params, stats, batch):
        """-> (outputs, the running statistics after this forward); uint8 pixels are normalised
        here, on the device."""
        images = normalize(batch["image"], config.data.mean, config.data.std)
        model = model_of(params, stats)
        keep = {PATCH_KEEP: batch[PATCH_KEEP]} if PATCH_KEEP in batch else {}
        outputs = model(images, batch[target], **keep)
        return outputs, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    def loss_of(params, stats, batch):
        outputs, stats = outputs_of(params, stats, batch)
        return loss_fn(outputs), stats

    grad_of = jax.value_and_grad(loss_of, has_aux=True)  # ((loss, stats), grads)
    # CLIPS (train/clips_loss.py; grad_accum_steps is 1, no BatchNorm: config_check): loss and
    # its parts
    clips_loss = make_clips_loss(config, mesh)
    clips_grad_of = clips_loss and jax.value_and_grad(
        lambda params, stats, batch: clips_loss(model_of(params, stats), batch), has_aux=True)

    def mean(stacked):  # per-micro-batch statistics (leading axis) -> their mean
        return jax.tree.map(lambda x: x.mean(0), stacked)

    def split(x):  # micro-batch m = rows m, m+accum, ...: every device keeps its own rows
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def merge(x):  # the inverse of `split`: back to the batch's row order and sharding
        x = x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
        return jax.lax.with_sharding_constraint(x, batch_sharding)

    def micro_negatives_grads(params, stats, micro):
        def add(carry, batch):
            (loss, new_stats), grads = grad_of(params, stats, batch)
            return jax.tree.map(jnp.add, carry, (loss, grads)), new_stats

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, new_stats = jax.lax.scan(add, zeros, micro)
        return (*jax.tree.map(lambda x: x / accum, total), mean(new_stats))

    def full_negatives_grads(params, stats, micro):
        def features(_, batch):
            outputs, new_stats = outputs_of(params, stats, batch)
            return None, (outputs.image, outputs.text, new_stats)

        _, (image, text, new_stats) = jax.lax.scan(features, None, micro)
        # The temperature and bias enter the loss directly, not through the towers: their
        # gradient is the whole-batch loss's, taken once through the model's own accessor.
        scalars, scalars_vjp = jax.vjp(lambda p: model_of(p, stats).contrastive_scalars(),
                                       params)
        loss, d = jax.value_and_grad(loss_fn)(
            losses.ContrastiveOutputs(merge(image), merge(text), *scalars))
        (grads,) = scalars_vjp((d.logit_scale, d.logit_bias))
        zero = jnp.zeros((), jnp.float32)

        def backprop(grads, xs):
            batch, d_img, d_txt = xs
            _, vjp = jax.vjp(lambda p: outputs_of(p, stats, batch)[0], params)
            (g,) = vjp(losses.ContrastiveOutputs(d_img, d_txt, zero, zero))
            return jax.tree.map(jnp.add, grads, g), None

        grads, _ = jax.lax.scan(backprop, grads, (micro, split(d.image), split(d.text)))
        return loss, grads, mean(new_stats)

    def accumulated_grads(params, stats, batch):
        """-> (loss, grads, the running statistics moved once)"""
        if accum == 1:
            (loss, stats), grads = grad_of(params, stats, batch)
            return loss, grads, stats
        micro = jax.tree.map(split, batch)
        if config.train.accum_negatives == "full" and not classify:  # no negatives to share
            return full_negatives_grads(params, stats, micro)
        return micro_negatives_grads(params, stats, micro)

    def train_step(state, batch):
        params, stats = split_params(setup.graphdef, state["params"])
        parts = {}
        # patch dropout: this step's kept patches, from (seed, step) alone (exact on resume)
        batch = with_patch_dropout(config, batch, state["step"], config.model.image.patch_size)
        if PATCH_KEEP in batch:
            batch[PATCH_KEEP] = jax.lax.with_sharding_constraint(batch[PATCH_KEEP],
                                                                 batch_sharding)
        with sharding.compute_layout(mesh, config.mesh.rules):
            if clips_loss is None:
                loss, grads, new_stats = accumulated_grads(params, stats, batch)
            else:
                (loss, parts), grads = clips_grad_of(params, stats, batch)
                new_stats = stats
        params, opt_state, grad_norm = setup.optimizer.apply(params, grads, state["opt_state"])
        finite = jnp.isfinite(grad_norm)  # a skipped step keeps the old statistics too
        stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_stats, stats)
        model = nnx.merge(setup.graphdef, params, stats)
        model.clamp_logit_scale(scale_max)
        params = nnx.to_pure_dict(nnx.state(model))
        metrics = {
            "loss": loss,
            "lr": schedule(state["step"]),
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
            "nonfinite_in_a_row": opt_state.nonfinite_in_a_row,
            "nonfinite_total": opt_state.nonfinite_total,
            **parts,
        }
        if not classify:
            logit_scale, logit_bias = model.contrastive_scalars()
            metrics["logit_scale"] = jnp.exp(logit_scale)
            if model.has_logit_bias:
                metrics["logit_bias"] = logit_bias
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        return ema.advanced(config, state, new_state, finite), metrics

    rep = sharding.replicated(mesh)
    return jax.jit(train_step,
                   in_shardings=(setup.state_shardings, batch_sharding),
                   out_shardings=(setup.state_shardings, rep),
                   donate_argnums=0)

