"""Runs the configured evaluations on a set of parameters and writes `eval.jsonl`.

The datasets come from `eval.zeroshot`, `eval.retrieval`, `eval.linear_probe` and
`eval.classify` (a classifier's, evaluate/classify.py) (each a list of
NAME=SOURCE specs, evaluate/sources.py) or, in the standalone command, from its flags. Loading a
set reads only its index (and a retrieval set's captions); images are streamed at each
evaluation, so host memory does not grow with the sets.
"""
import dataclasses
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from synthclip_jax.data.text_tokenizer import tokenizer_of
from synthclip_jax.evaluate import classify, retrieval, sources, zeroshot
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.run.metrics import MetricWriter
from synthclip_jax.train.best_checkpoint import BestCheckpoint


@dataclasses.dataclass
class Specs:
    zeroshot: list = dataclasses.field(default_factory=list)  # [(name or None, source)]
    retrieval: list = dataclasses.field(default_factory=list)  # [(name or None, source)]
    linear_probe: list = dataclasses.field(default_factory=list)  # [(name, train, test)]
    classify: list = dataclasses.field(default_factory=list)  # [(name or None, source)]

    @classmethod
    def from_config(cls, config):
        e = config.eval
        return cls(sources.parse_specs(e.zeroshot, "eval.zeroshot"),
                   sources.parse_specs(e.retrieval, "eval.retrieval"),
                   sources.parse_probe_specs(e.get("linear_probe", "")),
                   sources.parse_specs(e.get("classify", ""), "eval.classify"))

    def __bool__(self):
        return bool(self.zeroshot or self.retrieval or self.linear_probe or self.classify)


class Suite:
    """The datasets of one evaluation run and how to score a set of parameters on them."""

    def __init__(self, config, encoder, specs: Specs, tfds_data_dir: str = "",
                 progress: bool = False):
        self.config, self.encoder, self.specs, self.progress = config, encoder, specs, progress
        self.tfds_data_dir = tfds_data_dir or config.eval.get("tfds_data_dir", "")
        self.timings = {}
        self._zeroshot = self._retrieval = self._probe = self._classify = None

    def _common(self):
        d = self.config.data
        return dict(image_size=d.image_size, mean=d.mean, std=d.std,
                    tfds_data_dir=self.tfds_data_dir, read_threads=d.read_threads,
                    read_ahead=d.read_ahead)

    def load(self):
        """Opens the sets (once) and checks them cheaply, so a bad set fails at start-up."""
        if self._zeroshot is not None:
            return
        c, common = self.config, self._common()
        self._zeroshot = [zeroshot.ZeroShotSet(src, name=name, **common)
                          for name, src in self.specs.zeroshot]
        for data in self._zeroshot:
            data.check()
        self._retrieval = [retrieval.RetrievalSet(src, context_length=c.model.text.context_length,
                                                  name=name, tokenizer=tokenizer_of(c.model.text),
                                                  **common)
                           for name, src in self.specs.retrieval]
        self._classify = [classify.ClassifySet(src, name=name, **common)
                          for name, src in self.specs.classify]
        for data in self._classify:
            data.check()
        if self.specs.linear_probe:
            from synthclip_jax.evaluate import linear_probe
            self._probe = [linear_probe.ProbeSets(name, train, test, **common)
                           for name, train, test in self.specs.linear_probe]

    def __call__(self, params) -> dict:
        self.load()
        c, results = self.config, {}
        for data in self._zeroshot:
            start = time.perf_counter()
            results.update(zeroshot.evaluate(self.encoder, params, data, c.eval.templates,
                                             c.model.text.context_length, self.progress,
                                             tokenizer_of(c.model.text)))
            self.timings[f"zeroshot/{data.name or ''}"] = time.perf_counter() - start
        for data in self._retrieval:
            start = time.perf_counter()
            results.update(retrieval.evaluate(self.encoder, params, data,
                                              tuple(c.eval.get("retrieval_ks", retrieval.KS)),
                                              self.progress))
            self.timings[f"retrieval/{data.name or ''}"] = time.perf_counter() - start
        for data in self._classify:
            start = time.perf_counter()
            results.update(classify.evaluate(self.encoder, params, data, c.model.num_classes,
                                             self.progress))
            self.timings[f"classify/{data.name or ''}"] = time.perf_counter() - start
        if self._probe:
            from synthclip_jax.evaluate import linear_probe
            for data in self._probe:
                start = time.perf_counter()
                results.update(linear_probe.evaluate(
                    self.encoder, params, data, tuple(c.eval.get("linear_probe_shots", ())),
                    seed=c.seed, progress=self.progress))
                self.timings[f"linear_probe/{data.name}"] = time.perf_counter() - start
        return results


class Evaluator:
    def __init__(self, config, graphdef, mesh, workdir, resume_step: int):
        self.config = config
        specs = Specs.from_config(config)
        self.enabled = bool(specs)
        encoder = Encoder(graphdef, mesh, config.eval.batch_size, config.mesh.rules,
                          mean=config.data.mean, std=config.data.std)
        self.suite = Suite(config, encoder, specs)
        self.writer = MetricWriter(workdir, resume_step, filename="eval.jsonl",
                                   tensorboard=False) if self.enabled else None
        best = config.checkpoint.get("best_metric", "")
        self.best = BestCheckpoint(workdir, best, config.checkpoint.best_mode) if (
            best and self.enabled) else None

    def load(self):
        """The trainer calls it before the first step, so a bad set fails at start-up, not at
        the first evaluation hours later."""
        self.suite.load()

    def __call__(self, params, step: int, ema_params=None) -> dict:
        """`ema_params` (train.ema_decay): evaluated too, its keys prefixed `ema/`."""
        if not self.enabled:
            return {}
        results = self.suite(params)
        if ema_params is not None:
            results.update({f"ema/{k}": v for k, v in self.suite(ema_params).items()})
        self.writer.write(step, results)
        if self.best is not None:
            self.best.update(step, params, results)
        logging.info("eval at step %d: %s", step,
                     "  ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
        return results

    def row_missing(self, step: int) -> bool:
        """Whether eval.jsonl lacks `step`'s row: a run killed after that step's checkpoint and
        before its evaluation's row. The same answer on every process (process 0 holds the
        rows), since all of them take part in an evaluation."""
        if not self.enabled:
            return False
        missing = jax.process_index() == 0 and not self.writer.has_step(step)
        if jax.process_count() > 1:
            missing = bool(multihost_utils.broadcast_one_to_all(np.int32(missing)))
        return missing

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.best is not None:
            self.best.close()
