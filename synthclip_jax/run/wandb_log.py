"""Optional Weights & Biases logging (`log.wandb.project`; never required).

`wandb` is imported only when a project is set, and only on process 0, which writes the
metrics. The run id is kept in WORKDIR/wandb_id.txt, so a relaunch after preemption continues
the same W&B run. `log.wandb.mode=offline` writes the run under WORKDIR/wandb (a local workdir;
else ./wandb) for a later `wandb sync`.
"""
import json
import secrets

from etils import epath

ID_FILE = "wandb_id.txt"


class WandbRun:
    def __init__(self, config, workdir):
        try:
            import wandb
        except ImportError:
            raise ImportError(f"log.wandb.project={config.log.wandb.project!r} needs the wandb "
                              "package: pip install wandb (or set log.wandb.project='')") from None
        workdir = epath.Path(workdir)
        id_path = workdir / ID_FILE
        if id_path.exists():
            run_id = id_path.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_path.write_text(run_id + "\n")
        local = "://" not in str(workdir)
        self.run = wandb.init(project=config.log.wandb.project, mode=config.log.wandb.mode,
                              id=run_id, resume="allow", name=workdir.name,
                              dir=str(workdir) if local else None,
                              config=json.loads(config.to_json_best_effort()))

    def log(self, step: int, scalars: dict):
        self.run.log(dict(scalars), step=int(step))

    def close(self):
        self.run.finish()


def maybe_start(config, workdir, enabled: bool):
    """A WandbRun where `enabled` (process 0) and a project is set; else None."""
    if not (enabled and config.log.wandb.project):
        return None
    return WandbRun(config, workdir)
