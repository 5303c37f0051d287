"""`--config.init_from=PATH`: start training from given weights (fine-tuning), step 0, a fresh
optimizer.

PATH is a workdir (`tools.import_weights` output or an earlier run: the params of its latest
checkpoint, read by orbax straight into this run's shardings), or directly an OpenCLIP
local-dir, a CLIPModel directory or a weights file (read on the host, then placed with
`jax.make_array_from_callback`: each device receives only its own shard, never a full copy).
The source must fit this run's config: its model keys (workdir: `config.json`; OpenCLIP / HF:
their own config) and every tensor shape, or the run stops before the first step with one line
naming the key (a `ConfigError` on `init_from`). Used only when the workdir has no checkpoint
yet: a run that has one resumes from it.
"""
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from synthclip_jax.config.error import ConfigError
from synthclip_jax.train.checkpoint import DATA, STATE, restore_params
from synthclip_jax.train.ema import with_ema


def is_workdir(path) -> bool:
    path = epath.Path(path)
    return (path / "config.json").exists() and (path / "checkpoints").is_dir()


def _workdir_params(config, path, target):
    from synthclip_jax.export.import_weights import check_agrees, read_config
    from synthclip_jax.export.torch_files import WeightsError
    source = read_config(path / "config.json")
    tasks = (source.train.task, config.train.get("task", "contrastive"))
    if tasks[0] != tasks[1]:  # a classifier and a two-tower model share no parameter tree
        raise WeightsError(f"{path} holds a train.task={tasks[0]!r} model, this run trains "
                           f"train.task={tasks[1]!r}; set train.task={tasks[0]}")
    check_agrees(source, config, path, resize_pos_embed=False)
    manager = ocp.CheckpointManager(path / "checkpoints", item_names=(STATE, DATA))
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"init_from={path}: no checkpoint in {path / 'checkpoints'}")
        logging.info("init_from: params of step %d of %s", step, path)
        return restore_params(manager, step, target)
    finally:
        manager.close()


def _source_params(config, path, target):
    from synthclip_jax.export.import_weights import detect_format, import_weights
    fmt = detect_format(path)
    logging.info("init_from: %s weights from %s", fmt, path)
    _, host = import_weights(fmt, path, config)
    return jax.tree.map(
        lambda t, x: jax.make_array_from_callback(t.shape, t.sharding, lambda index: x[index]),
        target, host)


def load_params(config, target):
    """The params of `config.init_from`, placed as `target` (ShapeDtypeStructs with shardings)."""
    from synthclip_jax.export.torch_files import WeightsError
    path = epath.Path(config.init_from)
    try:
        if is_workdir(path):
            return _workdir_params(config, path, target)
        return _source_params(config, path, target)
    except WeightsError as error:
        raise ConfigError("init_from", f"init_from={config.init_from}: {error}") from None


def initial_state(config, setup) -> dict:
    """{'step': 0, 'params': the init_from weights, 'opt_state': fresh}, sharded as training."""
    params = load_params(config, setup.abstract_state["params"])
    fresh = jax.jit(lambda p: with_ema(config, {"step": jnp.zeros((), jnp.int32), "params": p,
                                                "opt_state": setup.optimizer.init(p)}),
                    out_shardings=setup.state_shardings)
    return fresh(params)
