"""Weight EMA (`train.ema_decay`; 0 = off): an exponential moving average of the model's state,
timm's `ModelEmaV3` as timm's and OpenCLIP-style trainers call it.

After optimizer update number t (t = 1, 2, ...; the train state's new `step`):

    ema <- lerp(ema, params, 1 - d(t))      (torch's lerp: ema + (1 - d) * (params - ema))
    d(t) = 0                                               for t <= 1 (the first update copies)
    d(t) = min(ema_decay, 1 - (1 + (t - 1)) ** -(2/3))     with train.ema_warmup (timm's
                                                           `use_warmup`, gamma 1, power 2/3)
    d(t) = ema_decay                                       without warmup

Like `ModelEmaV3(exclude_buffers=False)` the average covers the whole state the train state
calls 'params' (Params and BatchNorm running statistics). A skipped (non-finite) step leaves
the average alone, as it leaves the params. The average lives in the train state as 'ema'
(same tree and shardings as 'params'), so checkpoints carry it and resume is exact; a
checkpoint written before EMA was turned on restores with the average started from its params
(train/checkpoint.py). Evaluation runs on it beside the raw weights (metric keys `ema/...`);
`tools.convert_to_openclip --ema` exports it.
"""
import jax
import jax.numpy as jnp

KEY = "ema"
WARMUP_GAMMA, WARMUP_POWER = 1.0, 2.0 / 3.0  # timm ModelEmaV3's defaults


def enabled(config) -> bool:
    return config.train.get("ema_decay", 0.0) > 0  # .get: configs from before the key


def decay_at(config, step):
    """d(t) above; `step` (t) may be traced."""
    t = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)
    target = config.train.ema_decay
    if config.train.ema_warmup:
        decay = jnp.minimum(1.0 - (1.0 + t / WARMUP_GAMMA) ** -WARMUP_POWER, target)
    else:
        decay = jnp.asarray(target, jnp.float32)
    return jnp.where(t <= 0, 0.0, decay)


def with_ema(config, state: dict) -> dict:
    """`state` plus the average started at its params (when EMA is on)."""
    if not enabled(config):
        return state
    return {**state, KEY: jax.tree.map(jnp.copy, state["params"])}


def with_ema_shardings(config, shardings: dict) -> dict:
    return {**shardings, KEY: shardings["params"]} if enabled(config) else shardings


def advanced(config, old_state: dict, new_state: dict, finite) -> dict:
    """`new_state` (after the optimizer update) with the average moved towards its params;
    `finite`: whether the step was applied."""
    if not enabled(config):
        return new_state
    weight = 1.0 - decay_at(config, new_state["step"])

    def move(ema, param):
        moved = ema + weight.astype(ema.dtype) * (param - ema)
        return jnp.where(finite, moved, ema)

    return {**new_state, KEY: jax.tree.map(move, old_state[KEY], new_state["params"])}
