"""Train state: a plain pytree {'step', 'params', 'opt_state'}, created directly sharded.

Parameters are a pure dict of float32 arrays (`nnx.to_pure_dict`), which is what optax, orbax
and the OpenCLIP converter all consume; the module structure lives in the `graphdef`.

'params' is the model's whole state, as a torch state_dict holds buffers: its `nnx.Param`s
and, for a model with BatchNorm (the ResNet tower), the running statistics (`nnx.BatchStat`)
at their module paths. So checkpoints, `load_params`, `init_from`, evaluation and export carry
the statistics with no change, and a model without BatchNorm (every ViT) has the same tree as
before they existed: old checkpoints restore. The optimizer sees only the Params
(`split_params`): no moments and no weight decay for the statistics; the train step updates
them from the forward pass (train/step.py).
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.ema import with_ema, with_ema_shardings
from synthclip_jax.train.lock import freeze_locked_batch_norm, log_saving, make_trainable
from synthclip_jax.train.optimizer import (Optimizer, OptState, make_optimizer,
                                          weight_decay_mask)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    graphdef: nnx.GraphDef  # eval mode: BatchNorm reads its running statistics
    train_graphdef: nnx.GraphDef  # train mode (`Module.train()`): batch statistics
    optimizer: Optimizer
    abstract_state: dict  # ShapeDtypeStructs carrying their shardings (orbax restore target)
    state_shardings: dict
    init: callable  # () -> sharded initial state


def make_train_setup(config, mesh) -> TrainSetup:
    abstract_model = nnx.eval_shape(lambda: build_model(config, config.seed))
    graphdef, model_state = nnx.split(abstract_model)
    param_sh = sharding.param_shardings(model_state, mesh, config.mesh.rules)
    trainable = nnx.state(abstract_model, nnx.Param)
    locked = make_trainable(config, nnx.to_pure_dict(trainable))  # train.lock_*: lock.py
    optimizer = make_optimizer(
        config, weight_decay_mask(trainable, config.optim.weight_decay_policy), locked)
    abstract_opt = jax.eval_shape(optimizer.init, nnx.to_pure_dict(trainable))
    log_saving(locked, nnx.to_pure_dict(trainable),
               moment_bytes=jnp.dtype(config.optim.mu_dtype).itemsize + 4)
    rep = sharding.replicated(mesh)
    # Moments mirror the params' shardings; counters are replicated.
    adamw_sh = optax.tree_map_params(
        optimizer.adamw, lambda _, s: s, abstract_opt.adamw,
        optimizer.view(sharding.param_shardings(trainable, mesh, config.mesh.rules)),
        transform_non_params=lambda _: rep)
    opt_sh = OptState(adamw_sh, rep, rep)
    state_sh = with_ema_shardings(config, {"step": rep, "params": param_sh, "opt_state": opt_sh})
    abstract_model.train()
    freeze_locked_batch_norm(config, abstract_model)  # a locked ResNet's statistics stay
    train_graphdef = nnx.graphdef(abstract_model)

    def init_state():
        model = build_model(config, config.seed)
        return with_ema(config, {  # train.ema_decay: the average (train/ema.py)
            "step": jnp.zeros((), jnp.int32), "params": nnx.to_pure_dict(nnx.state(model)),
            "opt_state": optimizer.init(nnx.to_pure_dict(nnx.state(model, nnx.Param)))})

    abstract_state = jax.eval_shape(init_state)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
    # Seeded init under jit: with partitionable threefry the values do not depend on the mesh.
    init = jax.jit(init_state, out_shardings=state_sh)
    return TrainSetup(graphdef, train_graphdef, optimizer, abstract_state, state_sh, init)


def split_params(graphdef, params) -> tuple:
    """The train state's 'params' (the model's whole state) -> (its Params, its BatchNorm
    running statistics), pure dicts at the same paths ({} for a model without BatchNorm)."""
    model = nnx.merge(graphdef, params)
    return (nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
