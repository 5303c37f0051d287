"""AdamW with decoupled, masked weight decay (or Adam with coupled L2 decay, `optim.name`);
linear warmup + cosine (or constant, `optim.lr_schedule`); global-norm clipping;
non-finite steps skipped.

Which parameters are decayed is `optim.weight_decay_policy` applied to the kind each parameter
declares where it is created (`models/param_kinds.py`); the default, 'openclip', decays only
weights (kernels, projections, the token embedding).

A step whose gradients hold a NaN/Inf leaves parameters and moments untouched and is counted;
the trainer stops after `optim.max_nonfinite_in_a_row` such steps in a row. The test is one
scalar (the global gradient norm, which clipping needs anyway) deciding a `lax.cond` around
the whole update, so a finite step pays nothing for it. (`optax.apply_if_finite` computes
the update and then selects between old and new params and moments, leaf by leaf: about half
again the memory traffic of AdamW itself, which dominates small models' steps on CPU.)
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synthclip_jax.config.choices import OPTIMIZERS
from synthclip_jax.config.error import ConfigError
from synthclip_jax.models.param_kinds import DECAYED_KINDS, WEIGHT_DECAY_POLICIES


def weight_decay_mask(param_state: nnx.State, policy: str):
    """Pure-dict tree of bools, True where `policy` decays the parameter's declared kind."""
    if policy not in DECAYED_KINDS:
        raise ValueError(f"optim.weight_decay_policy={policy!r}; choose one of "
                         f"{WEIGHT_DECAY_POLICIES}")
    decayed = DECAYED_KINDS[policy]

    def decays(path, variable):
        kind = variable.get_metadata().get("param_kind")
        if kind is None:
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            raise ValueError(f"parameter {name} declares no param_kind; create it with "
                             "layers.normal_param/const_param(..., kind=...)")
        return kind in decayed

    tree = jax.tree_util.tree_map_with_path(
        decays, param_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(tree)


def make_schedule(config) -> optax.Schedule:
    total, warmup = config.total_steps, config.warmup_steps
    if not (0 <= warmup < total or warmup == total == 0):
        # config_check.validate stops this at the door; here for callers that skip it
        raise ConfigError("warmup_steps", f"warmup_steps={warmup} must lie in [0, "
                          f"total_steps={total}): the cosine decay after the warmup needs at "
                          "least one step")
    o = config.optim
    if o.get("lr_schedule", "cosine") == "constant":  # absent in configs from before the key
        # SimCLIP's GradualWarmupScheduler(multiplier=1): linear to lr, then lr.
        return optax.join_schedules(
            [optax.linear_schedule(o.lr_warmup_init, config.lr, warmup),
             optax.constant_schedule(config.lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=o.lr_warmup_init, peak_value=config.lr, warmup_steps=warmup,
        decay_steps=max(total, 1), end_value=o.lr_end)


class OptState(NamedTuple):
    adamw: optax.OptState
    nonfinite_in_a_row: jax.Array  # int32 scalars
    nonfinite_total: jax.Array


@dataclasses.dataclass(frozen=True)
class Optimizer:
    adamw: optax.GradientTransformation
    clip_norm: float  # 0: no clipping
    # Locked towers (train/lock.py): AdamW sees only the trainable arrays (a flat list), so
    # locked ones get no moments and keep their values; None = every parameter trains.
    trainable: "object | None" = None

    def view(self, tree):
        """What AdamW sees of a params-shaped tree (params, grads, masks, shardings)."""
        return tree if self.trainable is None else self.trainable.view(tree)

    def init(self, params) -> OptState:
        zero = jnp.zeros((), jnp.int32)
        return OptState(self.adamw.init(self.view(params)), zero, zero)

    def apply(self, params, grads, state: OptState):
        """-> (new params, new state, global norm of `grads` before clipping)."""
        full_params, params, grads = params, self.view(params), self.view(grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)

        def update(params, adamw_state):
            g = grads
            if self.clip_norm > 0:
                scale = jnp.minimum(1.0, self.clip_norm / grad_norm)
                g = jax.tree.map(lambda x: x * scale.astype(x.dtype), g)
            updates, adamw_state = self.adamw.update(g, adamw_state, params)
            return optax.apply_updates(params, updates), adamw_state

        params, adamw_state = jax.lax.cond(finite, update, lambda p, s: (p, s),
                                           params, state.adamw)
        in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1)
        total = state.nonfinite_total + (~finite).astype(jnp.int32)
        if self.trainable is not None:
            params = self.trainable.put(params, full_params)
        return params, OptState(adamw_state, in_a_row, total), grad_norm


def make_optimizer(config, decay_mask, trainable=None) -> Optimizer:
    """`decay_mask`: the params' tree of bools (`weight_decay_mask`). `optim.name`: 'adamw'
    (decoupled decay) or 'adam_l2' (simple-clip's torch Adam(weight_decay=wd): wd * param
    added to the gradient, then Adam's moments; the decay is scaled by Adam like the loss).
    `trainable`: train/lock.py's view of the locked towers (None: all train)."""
    o = config.optim
    if trainable is not None:
        decay_mask = trainable.view(decay_mask)
    name = o.name
    if name == "adamw":
        adamw = optax.adamw(make_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                            weight_decay=config.weight_decay, mask=decay_mask,
                            mu_dtype=jnp.dtype(o.mu_dtype))
    elif name == "adam_l2":
        adamw = optax.chain(optax.add_decayed_weights(config.weight_decay, decay_mask),
                            optax.adam(make_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                                       mu_dtype=jnp.dtype(o.mu_dtype)))
    else:
        raise ConfigError("optim.name", f"optim.name={name!r}; choose one of {OPTIMIZERS}")
    return Optimizer(adamw, o.grad_clip_norm, trainable)
