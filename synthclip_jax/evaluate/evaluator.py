"""Runs the configured evaluations on a set of parameters and writes `eval.jsonl`.

Evaluation sets are loaded once (on first use) and kept in host memory.
"""
from absl import logging

from synthclip_jax.evaluate import retrieval, zeroshot
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.metrics import MetricWriter


class Evaluator:
    def __init__(self, config, graphdef, mesh, workdir, resume_step: int):
        self.config = config
        self.enabled = bool(config.eval.zeroshot or config.eval.retrieval)
        self.encoder = Encoder(graphdef, mesh, config.eval.batch_size, config.mesh.rules,
                               mean=config.data.mean, std=config.data.std)
        self.writer = MetricWriter(workdir, resume_step, filename="eval.jsonl",
                                   tensorboard=False) if self.enabled else None
        self._zeroshot = self._retrieval = None

    def load(self):
        """Reads and decodes the evaluation sets (once). The trainer calls it before the first
        step, so a bad set fails at start-up, not at the first evaluation hours later."""
        c = self.config
        size, ctx = c.data.image_size, c.model.text.context_length
        if c.eval.zeroshot and self._zeroshot is None:
            self._zeroshot = zeroshot.ZeroShotSet(c.eval.zeroshot, size, c.data.mean, c.data.std)
        if c.eval.retrieval and self._retrieval is None:
            self._retrieval = retrieval.RetrievalSet(c.eval.retrieval, size, c.data.mean,
                                                     c.data.std, ctx)

    def __call__(self, params, step: int) -> dict:
        if not self.enabled:
            return {}
        self.load()
        c, results = self.config, {}
        if c.eval.zeroshot:
            results.update(zeroshot.evaluate(self.encoder, params, self._zeroshot,
                                             c.eval.templates, c.model.text.context_length))
        if c.eval.retrieval:
            results.update(retrieval.evaluate(self.encoder, params, self._retrieval))
        self.writer.write(step, results)
        logging.info("eval at step %d: %s", step,
                     "  ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
        return results

    def close(self):
        if self.writer is not None:
            self.writer.close()
