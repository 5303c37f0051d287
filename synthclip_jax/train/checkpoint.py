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
