"""SimCLIP's similarity-cluster batches in training (`data.clusters`): the trainer's data source.

Training is cut into periods of `data.clusters.every_steps` steps (0: one epoch, records //
batch_size steps). At the start of each period the current model embeds every training record
(`data.clusters.modality`: first caption or center crop; evaluate/record_features.py), sharded
over the mesh like evaluation, in batches of `eval.batch_size`; the top-k neighbour index is
built on the devices (data/neighbours.py), and the period's record order is drawn from it (data/clusters.py): per
batch, int(batch_size * p) examples in clusters of `cluster_size` similar ones, the rest from
seeded permutations. p starts at `proportion` and doubles at each epoch of `warmup_epochs`
(SimCLIP's --warmup-prop / --upweight-epochs). With `online=False` the bank is embedded once, at
the run's first period (SimCLIP's offline mode: the model the run starts from), and its
neighbour index is kept in WORKDIR/clusters/neighbours.npz for later periods.

Exact resume: the order of every period is stored, WORKDIR/clusters/order-STEP.npy (+ .json:
epoch, proportion, clusters, members filled at random), written by process 0 before the period's
first batch; the checkpoint's data state names the period's first step and the Grain iterator
position within it. A resumed period reads its stored order instead of re-embedding (the model
that embedded it is gone), so its batches are those of the uninterrupted run; a resume exactly
at a period boundary embeds with the restored parameters, the same ones the uninterrupted run
had there. The newest `checkpoint.keep + 1` orders are kept. Cost per period: every process
reads and embeds every record once, plus the index (tools/bench/neighbours.py).
"""
import json

import grain
import jax
import numpy as np
from absl import logging
from etils import epath

from synthclip_jax.data import pipeline
from synthclip_jax.data.clusters import (ClusterStats, cluster_layout, cluster_order,
                                         neighbours_needed, proportion_at)
from synthclip_jax.data.neighbours import top_k_neighbours
from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.text_tokenizer import tokenizer_of
from synthclip_jax.evaluate.encode import Encoder
from synthclip_jax.evaluate.record_features import record_features
from synthclip_jax.run.files import atomic_path

NEIGHBOURS = "neighbours.npz"


class ClusterSource:
    """The trainer's source (data/source.py) with `prepare(step, params)`, which the loop calls
    before every step: at a period's first step it builds that period's order."""

    def __init__(self, config, graphdef, mesh, workdir):
        self.config, self.mesh = config, mesh
        self.c = config.data.clusters
        self.shards = TFRecordShards(config.data.train)
        pipeline.check_enough_records(config, self.shards)
        self.epoch_steps = len(self.shards) // config.batch_size
        self.period = self.c.every_steps or self.epoch_steps
        self.folder = epath.Path(workdir) / "clusters"
        self.encoder = Encoder(graphdef, mesh, config.eval.batch_size, config.mesh.rules)
        self.start = None  # first step of the period whose order `self.inner` walks
        self.inner = None
        self.counts = {"corrupt": 0, "examples": 0, "filled": 0, "embed_corrupt": 0}

    # --- the source interface ---
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.inner is None:
            raise RuntimeError("ClusterSource: prepare(step, params) before the first batch")
        return next(self.inner)

    def stats(self) -> dict:
        inner = self.inner.stats() if self.inner is not None else {}
        return {**inner, "clusters_filled": self.counts["filled"],
                "clusters_embed_corrupt": self.counts["embed_corrupt"]}

    def get_state(self) -> dict:
        return {"clusters_start": self.start, "filled": self.counts["filled"],
                **self.inner.get_state()}

    def set_state(self, state: dict):
        if "clusters_start" not in state:
            raise ValueError("the checkpoint's data state is not a cluster source's (was "
                             "data.clusters.enabled switched on for a resume?); train it in a "
                             "new workdir")
        start = int(state["clusters_start"])
        order = self.load_order(start)
        self.counts["filled"] = int(state.get("filled", 0))
        self.build(start, order)
        self.inner.set_state(state)

    # --- periods ---
    def prepare(self, step: int, params):
        if self.start is not None and step < self.start + self.period:
            return
        if step % self.period:
            raise RuntimeError(f"step {step} is inside a period of data.clusters.every_steps="
                               f"{self.period} with no stored order (was every_steps changed?)")
        self.build(step, self.make_order(step, params))

    def layout(self, step: int) -> tuple:
        epoch = step // self.epoch_steps
        p = proportion_at(epoch, self.c.proportion, tuple(self.c.warmup_epochs))
        return epoch, p

    def make_order(self, start: int, params) -> np.ndarray:
        c, config = self.c, self.config
        epoch, p = self.layout(start)
        clustered, num_clusters = cluster_layout(config.batch_size, p, c.cluster_size)
        stats = ClusterStats()
        rng = np.random.default_rng([config.seed, start])
        if clustered:
            sims, ids = self.neighbours(start, params, p)
        else:  # warmup share below one pair: a plain shuffled period, nothing to embed
            sims = ids = np.zeros((len(self.shards), 1), np.int32)
        order = cluster_order(ids, sims, batch_size=config.batch_size, proportion=p,
                              cluster_size=c.cluster_size, neighborhood=c.neighborhood,
                              num_batches=self.period, rng=rng, stats=stats)
        self.counts["filled"] += stats.filled
        info = {"start_step": start, "epoch": epoch, "proportion": p, "clustered": clustered,
                "clusters_per_batch": num_clusters, "filled": stats.filled,
                "modality": c.modality, "online": c.online}
        logging.info("cluster order for steps %d..%d: %s", start, start + self.period - 1, info)
        if jax.process_index() == 0:
            self.save_order(start, order, info)
        return order

    def neighbours(self, start: int, params, proportion: float) -> tuple:
        c, config = self.c, self.config
        saved = self.folder / NEIGHBOURS
        if not c.online and saved.exists():
            with saved.open("rb") as f:
                kept = np.load(f)
                return kept["sims"], kept["ids"]
        logging.info("embedding %d records (%s) at step %d for cluster batches",
                     len(self.shards), c.modality, start)
        features, bad = record_features(
            self.encoder, params, self.shards, c.modality,
            context_length=config.model.text.context_length, image_size=config.data.image_size,
            mean=config.data.mean, std=config.data.std, skip_corrupt=config.data.skip_corrupt,
            log=logging.info, tokenize=tokenizer_of(config.model.text))
        self.counts["embed_corrupt"] += bad
        k = neighbours_needed(config.batch_size, proportion, c.cluster_size, c.neighborhood)
        if not c.online:  # kept for every later period: the largest proportion's k
            k = neighbours_needed(config.batch_size, 1.0, c.cluster_size, c.neighborhood)
        sims, ids = top_k_neighbours(features, k, self.mesh)
        if not c.online and jax.process_index() == 0:
            with atomic_path(saved) as tmp, open(tmp, "wb") as f:
                np.savez(f, sims=sims, ids=ids, step=start)
        return sims, ids

    def order_path(self, start: int) -> epath.Path:
        return self.folder / f"order-{start:09d}.npy"

    def save_order(self, start: int, order: np.ndarray, info: dict):
        path = self.order_path(start)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, order)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
        keep = self.config.checkpoint.keep + 1
        for old in sorted(self.folder.glob("order-*.npy"))[:-keep]:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)

    def load_order(self, start: int) -> np.ndarray:
        path = self.order_path(start)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the cluster order of the checkpoint's period "
                                    f"(steps from {start}) is missing; it cannot be recomputed "
                                    "(the model that embedded it is gone)")
        with path.open("rb") as f:
            return np.load(f)

    def build(self, start: int, order: np.ndarray):
        """The Grain pipeline over `order` (this process's rows), counts carried over."""
        config = self.config
        if self.inner is not None:
            self.counts.update(corrupt=self.inner.corrupt, examples=self.inner.examples)
        seed = int(np.random.default_rng([config.seed, start, 1]).integers(2**31))
        indices = grain.MapDataset.source(order)
        self.inner = pipeline.GrainSource(
            lambda position: pipeline.train_dataset(
                config, self.shards, jax.process_index(), jax.process_count(), position,
                indices=indices, seed=seed),
            config.data.max_corrupt_fraction, len(self.shards) / jax.process_count(),
            config.batch_size, jax.process_count())
        self.inner.corrupt, self.inner.examples = self.counts["corrupt"], self.counts["examples"]
        self.start = start
