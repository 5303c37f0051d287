"""The best step by an evaluation metric (`checkpoint.best_metric`, `checkpoint.best_mode`),
kept in WORKDIR/best_checkpoint/ besides the latest `checkpoint.keep` in checkpoints/.

Every evaluation saves its params there with the metric value; orbax keeps the best one
(`best_fn`, `max_to_keep=1`) and reads the stored values back on resume, so a resumed run
compares against the best of the whole run. Only the params are kept (no optimizer moments):
it is for evaluation and export (`--best`), not for resuming.
"""
import orbax.checkpoint as ocp
from etils import epath

from synthclip_jax.train.checkpoint import STATE

BEST_DIR = "best_checkpoint"


class BestCheckpoint:
    def __init__(self, workdir, metric: str, mode: str = "max"):
        self.metric = metric
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics[metric], best_mode=mode,
            keep_checkpoints_without_metrics=False, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(epath.Path(workdir) / BEST_DIR,
                                             item_names=(STATE,), options=options)

    def update(self, step: int, params, results: dict):
        if self.metric not in results:
            raise ValueError(f"checkpoint.best_metric={self.metric!r} is not among the "
                             f"evaluation's metrics: {', '.join(sorted(results))}")
        if step in self.manager.all_steps():  # re-evaluated (resume at an evaluated step)
            return
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave({"params": params})}),
            metrics={self.metric: float(results[self.metric])}, force=True)

    def best_step(self):
        return self.manager.best_step()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def add_step_flags(parser):
    """`--step N | --best` of the commands that read one checkpoint of a workdir."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    which.add_argument("--best", action="store_true",
                       help=f"the best step kept by checkpoint.best_metric ({BEST_DIR}/)")
