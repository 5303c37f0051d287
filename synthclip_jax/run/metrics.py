"""metrics.jsonl / eval.jsonl + TensorBoard, written by process 0 only (training and evaluation).

On resume from step s, lines for steps after s (logged before the run stopped but after its
last checkpoint) are dropped, so the file reads as one uninterrupted run. Object stores (gs://)
have no append: there rows are buffered and the file is rewritten at most every FLUSH_SECONDS
(and at close), not at every row. A kill at any moment leaves a file a resume reads: rewrites
replace the file whole (files.replace_text), and a torn last append is dropped on resume. Rows may also go to Weights & Biases (wandb_log.py).
"""
import json
import time

import jax
from absl import logging
from etils import epath

from synthclip_jax.run.files import read_jsonl_lines, replace_text

FLUSH_SECONDS = 60.0  # object storage: one whole-file rewrite a minute, whatever the log rate


class MetricWriter:
    def __init__(self, workdir, resume_step: int, filename: str = "metrics.jsonl",
                 tensorboard: bool = True, wandb=None):
        self.enabled = jax.process_index() == 0
        self.path = epath.Path(workdir) / filename
        self.tb = None
        self.wandb = wandb  # a wandb_log.WandbRun, or None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = []
        if self.path.exists():  # a kill mid-append leaves a torn last line: dropped, with a word
            self.lines = [line for line in read_jsonl_lines(self.path, warn=logging.warning)
                          if json.loads(line)["step"] <= resume_step]
            replace_text(self.path, "".join(line + "\n" for line in self.lines))
        self.appendable = "://" not in str(self.path)
        self.flushed, self.unflushed = time.monotonic(), False
        if tensorboard:
            from tensorboardX import SummaryWriter  # light; no TensorFlow needed
            self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def has_step(self, step: int) -> bool:
        """Whether a row of `step` is kept (process 0 only: the others hold no rows)."""
        return self.enabled and any(json.loads(line)["step"] == step for line in self.lines)

    def write(self, step: int, scalars: dict):
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        line = json.dumps(row)
        if self.appendable:
            with self.path.open("a") as f:
                f.write(line + "\n")
        else:
            self.lines.append(line)
            self.unflushed = True
            if time.monotonic() - self.flushed >= FLUSH_SECONDS:
                self.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(step, {k: v for k, v in row.items() if k != "step"})

    def flush(self):
        """Object storage: the buffered rows, written (the whole file: no append there)."""
        if self.enabled and not self.appendable and self.unflushed:
            replace_text(self.path, "".join(x + "\n" for x in self.lines))
            self.unflushed, self.flushed = False, time.monotonic()

    def close(self):
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
