"""AdamW with decoupled, masked weight decay; linear warmup + cosine; global-norm clipping.

Weight decay skips biases, LayerNorm scales, position/class embeddings and the logit
scale/bias (decided by parameter name, so stacked per-layer tensors are treated right).
Non-finite gradients skip the whole update (`optax.apply_if_finite`), and the trainer stops
after `optim.max_nonfinite_in_a_row` such steps in a row.
"""
import jax
import optax

NO_DECAY_NAMES = ("bias", "scale", "positional_embedding", "class_embedding", "logit_scale",
                  "logit_bias")


def decays(path) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return not any(name == n or name.endswith("_" + n) for n in NO_DECAY_NAMES)


def weight_decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_schedule(config) -> optax.Schedule:
    total, warmup = config.total_steps, config.warmup_steps
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup_steps={warmup} must lie in [0, total_steps={total}]")
    return optax.warmup_cosine_decay_schedule(
        init_value=config.optim.lr_warmup_init, peak_value=config.lr, warmup_steps=warmup,
        decay_steps=max(total, 1), end_value=config.optim.lr_end)


def make_optimizer(config, params) -> optax.GradientTransformation:
    o = config.optim
    parts = []
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    parts.append(optax.adamw(make_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=config.weight_decay, mask=weight_decay_mask(params)))
    # The trainer raises long before this count; it only keeps apply_if_finite from ever
    # letting a non-finite update through.
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)
