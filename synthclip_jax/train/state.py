"""Train state: a plain pytree {'step', 'params', 'opt_state'}, created directly sharded.

Parameters are a pure dict of float32 arrays (`nnx.to_pure_dict`), which is what optax, orbax
and the OpenCLIP converter all consume; the module structure lives in the `graphdef`.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.optimizer import (Optimizer, OptState, make_optimizer,
                                          weight_decay_mask)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    graphdef: nnx.GraphDef
    optimizer: Optimizer
    abstract_state: dict  # ShapeDtypeStructs carrying their shardings (orbax restore target)
    state_shardings: dict
    init: callable  # () -> sharded initial state


def make_train_setup(config, mesh) -> TrainSetup:
    abstract_model = nnx.eval_shape(lambda: build_model(config, config.seed))
    graphdef, abstract_params = nnx.split(abstract_model)
    param_sh = sharding.param_shardings(abstract_params, mesh, config.mesh.rules)
    optimizer = make_optimizer(
        config, weight_decay_mask(abstract_params, config.optim.weight_decay_policy))
    abstract_params = nnx.to_pure_dict(abstract_params)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    rep = sharding.replicated(mesh)
    # Moments mirror the params' shardings; counters are replicated.
    adamw_sh = optax.tree_map_params(optimizer.adamw, lambda _, s: s, abstract_opt.adamw,
                                     param_sh, transform_non_params=lambda _: rep)
    opt_sh = OptState(adamw_sh, rep, rep)
    state_sh = {"step": rep, "params": param_sh, "opt_state": opt_sh}

    def init_state():
        params = nnx.to_pure_dict(nnx.state(build_model(config, config.seed)))
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": optimizer.init(params)}

    abstract_state = jax.eval_shape(init_state)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh)
    # Seeded init under jit: with partitionable threefry the values do not depend on the mesh.
    init = jax.jit(init_state, out_shardings=state_sh)
    return TrainSetup(graphdef, optimizer, abstract_state, state_sh, init)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
