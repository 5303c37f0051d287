"""`--mode=eval`: evaluate the latest checkpoint of a workdir and append to its eval.jsonl."""
from absl import logging
from etils import epath

from synthclip_jax import sharding
from synthclip_jax.evaluate.evaluator import Evaluator
from synthclip_jax.train.checkpoint import Checkpointer, restore_params, saved_entries
from synthclip_jax.train.state import make_train_setup


def evaluate_latest(config, workdir, devices=None) -> dict:
    """Evaluates the latest checkpoint in `workdir` on eval.zeroshot / eval.retrieval."""
    workdir = epath.Path(workdir)
    mesh = sharding.make_mesh(config.mesh, devices)
    setup = make_train_setup(config, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'} to evaluate")
        # Params only: the optimizer moments are not needed (and an imported workdir has none).
        params = restore_params(checkpointer.manager, latest, setup.abstract_state["params"])
        # train.ema_decay: the average too, evaluated beside (keys `ema/...`)
        ema = (restore_params(checkpointer.manager, latest, setup.abstract_state["params"],
                              "ema")
               if "ema" in saved_entries(workdir / "checkpoints", latest) else None)
    finally:
        checkpointer.close()
    step = int(latest)
    logging.info("evaluating the checkpoint of step %d", step)
    # resume_step=step-1: a new row for `step` replaces one an earlier evaluation wrote.
    evaluator = Evaluator(config, setup.graphdef, mesh, workdir, resume_step=step - 1)
    if not evaluator.enabled:
        raise ValueError("--mode=eval: set eval.zeroshot, eval.retrieval, eval.linear_probe "
                         "and/or eval.classify")
    try:
        return evaluator(params, step, ema_params=ema)
    finally:
        evaluator.close()
