"""Orbax checkpoints: train state (params, optimizer, step) + the data iterator's state.

Saves are asynchronous (training goes on while arrays are written) and atomic (orbax writes to
a temporary directory and renames), and the last `checkpoint.keep` are kept. Restoring targets
the abstract state with its shardings, so a checkpoint restores onto any mesh.
"""
import orbax.checkpoint as ocp
from etils import epath

STATE, DATA = "state", "data"


class Checkpointer:
    def __init__(self, directory, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(
            epath.Path(directory), item_names=(STATE, DATA), options=options)

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict):
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state)}), force=True)

    def restore(self, step: int, abstract_state):
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
        return restored[STATE], restored[DATA]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(workdir, step=None, best: bool = False, shardings=None):
    """(config, params, step) of a training workdir: `config.json` and the params of checkpoint
    `step` (default: the latest; `best`: the best_checkpoint/ step, train/best_checkpoint.py) as
    a pure dict of float32 numpy arrays, restored on one host device whatever mesh trained it
    (or, given `shardings(abstract_params)`, as jax arrays placed by it). Only the params are read
    (orbax partial restore), not the optimizer moments, so exporting a large model needs ~1x its
    size in host memory."""
    import json

    import jax
    import ml_collections
    import numpy as np
    from flax import nnx

    from synthclip_jax.models.two_tower import build_model

    workdir = epath.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    directory = workdir / ("best_checkpoint" if best else "checkpoints")
    manager = ocp.CheckpointManager(directory, item_names=(STATE,) if best else (STATE, DATA))
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}" + (
                " (set checkpoint.best_metric to keep the best step)" if best else ""))
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise ValueError(f"no checkpoint for step {step} in {directory}; "
                             f"have {sorted(steps)}")
        device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        abstract = nnx.eval_shape(lambda: build_model(config, 0))
        placement = (shardings(nnx.state(abstract)) if shardings else
                     jax.tree.map(lambda _: device, nnx.to_pure_dict(nnx.state(abstract))))
        abstract = nnx.to_pure_dict(nnx.state(abstract))
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, placement)
        restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s),
                                      {"params": placement}),
            partial_restore=True)}))
    finally:
        manager.close()
    params = restored[STATE]["params"]
    if shardings is None:
        params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return config, params, step
