"""Orbax checkpoints: train state (params, optimizer, step) + the data iterator's state.

Saves are asynchronous (training goes on while arrays are written) and atomic (orbax writes to
a temporary directory and renames), and the last `checkpoint.keep` are kept. Restoring targets
the abstract state with its shardings, so a checkpoint restores onto any mesh.

A kill at any moment leaves a workdir that resumes: a save cut short is an orbax temporary
(`N.orbax-checkpoint-tmp-*`), removed when the next run opens the folder; a finished checkpoint
that cannot be read (a file lost since, a disk fault) is moved aside as `N.unreadable` with a
warning and the run resumes from the newest one that reads (`restore_newest`).
"""
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

STATE, DATA = "state", "data"
# State entries a checkpoint may lack (written before the option was on): each restores as a
# copy of the checkpoint's params (train/ema.py's average).
STARTED_FROM_PARAMS = ("ema",)


def saved_entries(directory, step: int) -> set:
    """The train state's top-level entries in checkpoint `step` ('step', 'params', ...)."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory) / str(step) / STATE)
    return set(metadata.tree.keys())


class Checkpointer:
    def __init__(self, directory, keep: int):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=(STATE, DATA), options=options)

    def latest_step(self):
        return self.manager.latest_step()

    @staticmethod
    def steps_in(directory) -> int:
        """The latest finalized step in `directory` without opening a manager (-1: none)."""
        directory = epath.Path(directory)
        steps = ocp.utils.checkpoint_steps(directory) if directory.exists() else []
        return max(steps, default=-1)

    def save(self, step: int, state, data_state: dict):
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(data_state)}), force=True)

    def restore(self, step: int, abstract_state):
        import jax
        import jax.numpy as jnp
        saved = saved_entries(self.manager.directory, step)
        missing = [k for k in STARTED_FROM_PARAMS if k in abstract_state and k not in saved]
        target = {k: v for k, v in abstract_state.items() if k not in missing}
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(target), DATA: ocp.args.JsonRestore()}))
        state = dict(restored[STATE])
        for key in missing:
            state[key] = jax.tree.map(jnp.copy, state["params"])
        return state, restored[DATA]

    def restore_newest(self, abstract_state):
        """(step, state, data state) of the newest checkpoint that reads. One that does not is
        moved aside as `N.unreadable` (so a later save of step N has its name free) and the next
        older is tried; if none reads, the newest one's error is raised: then the fault is not
        in the files (e.g. a model that differs from the checkpoint's)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state, data_state = self.restore(step, abstract_state)
            except Exception as error:  # orbax raises many kinds for missing or damaged files
                failures.append((step, error))
                continue
            for bad, error in failures:
                aside = self.directory / f"{bad}.unreadable-{int(time.time())}"
                if jax.process_index() == 0:
                    (self.directory / str(bad)).rename(aside)
                logging.warning("checkpoint %d cannot be read (%s: %s); moved aside to %s, "
                                "resuming from step %d", bad, type(error).__name__,
                                " ".join(str(error).split())[:300], aside, step)
            if failures:
                self.manager.reload()
            return step, state, data_state
        raise failures[0][1]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(workdir, step=None, best: bool = False, shardings=None, attempts: int = 3,
                ema: bool = False):
    """(config, params, step) of a training workdir: `config.json` and the params of checkpoint
    `step` (default: the latest; `best`: the best_checkpoint/ step, train/best_checkpoint.py) as
    a pure dict of float32 numpy arrays, restored on one host device whatever mesh trained it
    (or, given `shardings(abstract_params)`, as jax arrays placed by it). Only the params are read
    (orbax partial restore), not the optimizer moments, so exporting a large model needs ~1x its
    size in host memory.

    Orbax lists only finalized checkpoints, but a live run may delete the one being read (with
    `checkpoint.keep=1` the previous step goes as soon as the next is saved). Then the latest
    is listed again and read, up to `attempts` times; an explicitly asked `step` that vanished
    is an error saying so. `ema`: the weight average (train.ema_decay) instead of the params."""
    import ml_collections

    from synthclip_jax.config.resume_check import read_config_json

    workdir = epath.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(read_config_json(workdir))
    directory = workdir / ("best_checkpoint" if best else "checkpoints")
    for attempt in range(1, attempts + 1):
        steps = ocp.utils.checkpoint_steps(directory) if directory.exists() else []
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}" + (
                " (set checkpoint.best_metric to keep the best step)" if best else ""))
        chosen = max(steps) if step is None else int(step)
        if chosen not in steps:
            raise ValueError(f"no checkpoint for step {chosen} in {directory}; "
                             f"have {sorted(steps)}")
        try:
            return config, _restore_params(directory, config, chosen, best, shardings,
                                           "ema" if ema else "params"), chosen
        except Exception as error:  # whatever orbax raises on files vanishing mid-read
            if (directory / str(chosen)).exists():
                raise  # not a deletion: a real error
            if step is not None:
                raise FileNotFoundError(
                    f"checkpoint {chosen} in {directory} was deleted while it was read (a live "
                    f"run keeps only the last checkpoint.keep steps); ask for a newer --step"
                ) from error
            if attempt == attempts:
                raise
            from absl import logging
            logging.warning("checkpoint %d was deleted while it was read (a live run keeps only "
                            "its last checkpoint.keep steps); reading the newest again", chosen)


def _restore_params(directory, config, step: int, best: bool, shardings, tree="params"):
    """The params of checkpoint `step`: float32 numpy arrays on one host device, or placed by
    `shardings`."""
    import jax
    import numpy as np
    from flax import nnx

    from synthclip_jax.models.two_tower import build_model

    manager = ocp.CheckpointManager(directory, item_names=(STATE,) if best else (STATE, DATA))
    try:
        device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        abstract = nnx.eval_shape(lambda: build_model(config, 0))
        placement = (shardings(nnx.state(abstract)) if shardings else
                     jax.tree.map(lambda _: device, nnx.to_pure_dict(nnx.state(abstract))))
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              nnx.to_pure_dict(nnx.state(abstract)), placement)
        if tree != "params" and tree not in saved_entries(directory, step):
            raise FileNotFoundError(f"checkpoint {step} in {directory} holds no {tree!r} "
                                    "weights (train.ema_decay was 0)")
        params = restore_params(manager, step, target, tree)
    finally:
        manager.close()
    if shardings is None:
        params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return params


def restore_params(manager, step: int, target, tree: str = "params"):
    """Only the params of checkpoint `step` (orbax partial restore: no optimizer moments read),
    placed as `target`'s ShapeDtypeStructs say, shard by shard. Works on full training
    checkpoints and on the weights-only ones `tools.import_weights` writes."""
    import jax
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item={tree: target},
        restore_args=jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                  {tree: target}),
        partial_restore=True)}))
    return restored[STATE][tree]
