"""Weighted mixtures of training sources: `data.train = "GLOB1:0.8,GLOB2:0.2"`.

The syntax is parsed in mixture_spec.py (also read by config_check, without Grain).

Each source is its own endless sequence of seeded epochs (`pipeline.shuffled_indices`, seed
`seed + k` for source k, so that equal-sized sources are not read in the same order); Grain's
`MapDataset.mix` interleaves them deterministically in the weights' proportions, element by
element (0.8/0.2: four of source 0, then one of source 1, ...), so every batch holds the
proportions as closely as its size allows. A small source simply starts its next epoch sooner.
The rest is the single-source pipeline: per-element random choices seeded by position, this
process's slice, batches; the iterator state resumes the exact sequence. `stats()` adds the
examples drawn from each source so far (`data_mixture/K_examples`, this process), which the
trainer logs with its metrics; the counts travel with the iterator state.
"""
import dataclasses

import grain
import numpy as np

from synthclip_jax.config.error import ConfigError
from synthclip_jax.data.pipeline import GrainSource, batched, load_example, shuffled_indices
from synthclip_jax.data.shard_files import TFRecordShards

@dataclasses.dataclass
class LoadTagged(grain.transforms.RandomMap):
    """(source k, record i) -> source k's example, with `source` = k for the counts."""

    loads: list

    def random_map(self, element, rng: np.random.Generator):
        k, i = element
        return {**self.loads[k].random_map(i, rng), "source": np.int32(k)}


@dataclasses.dataclass
class Tag(grain.transforms.Map):
    """record i of source k -> (k, i) (a class, not a lambda: worker processes unpickle it)."""

    k: int

    def map(self, i):
        return self.k, i


def mixture_dataset(config, sources: list, weights: list, process_index: int,
                    process_count: int, start: int = 0) -> grain.IterDataset:
    """From global element `start` on (pipeline.batched)."""
    loads = [load_example(config, s) for s in sources]
    parts = [shuffled_indices(len(s), config.seed + k).map(Tag(k))
             for k, s in enumerate(sources)]
    return batched(config, grain.MapDataset.mix(parts, weights), LoadTagged(loads),
                   process_index, process_count, start)


class MixtureSource(GrainSource):
    """A GrainSource that counts each batch's examples per source (metrics, saved state)."""

    def __init__(self, dataset_from, num_sources: int, *args):
        super().__init__(dataset_from, *args)
        self.counts = [0] * num_sources

    def __next__(self) -> dict:
        batch = super().__next__()
        ids = np.bincount(batch.pop("source"), minlength=len(self.counts))
        self.counts = [c + int(n) for c, n in zip(self.counts, ids)]
        return batch

    def stats(self) -> dict:
        return {**super().stats(), **{f"data_mixture/{k}_examples": c
                                      for k, c in enumerate(self.counts)}}

    def get_state(self) -> dict:
        return {**super().get_state(), "per_source": list(self.counts)}

    def set_state(self, state: dict):
        super().set_state(state)
        self.counts = [int(c) for c in state["per_source"]]


def make_mixture_source(config, mixture, process_index: int, process_count: int):
    sources = [TFRecordShards(pattern) for pattern, _ in mixture]
    weights = [w for _, w in mixture]
    records = sum(len(s) for s in sources)
    if records < config.batch_size:  # as for one source: a pair would repeat within a batch
        raise ConfigError("batch_size", f"data.train={config.data.train!r} holds {records} "
                          f"records, fewer than one batch (batch_size={config.batch_size}); add "
                          "data or lower --config.batch_size")
    # the corrupt-record allowance: per "epoch" of all the sources' records together
    return MixtureSource(
        lambda start: mixture_dataset(config, sources, weights, process_index, process_count,
                                      start),
        len(sources), config.data.max_corrupt_fraction, records / process_count,
        config.batch_size, process_count)
