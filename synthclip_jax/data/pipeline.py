"""Grain input pipeline over TFRecord shards.

  record indices -> seeded global shuffle, reshuffled every epoch -> this process's slice
  -> read (CRC-checked) -> decode JPEG -> RandomResizedCrop (uint8 pixels: the train step
  normalises them on the device, image_normalize.py) -> pick a caption
  -> tokenize (in `data.read_threads` threads, `data.read_ahead` examples ahead) -> batch
  -> worker processes (`data.num_workers`) with prefetch.

Every random choice comes from Grain's per-element generator (seeded by `seed` and the element's
position), so the batches are a pure function of the config and the step: the saved position
(examples consumed by all processes, `GrainSource`) resumes the exact sequence, on any
process count.

Bad records (CRC mismatch, truncation, undecodable image, bad caption) raise an error naming
file and offset. With `data.skip_corrupt`, a bad record is replaced by the next good one in the
shuffled order and counted; the trainer logs the total (`GrainSource.stats()`), and the source
stops once it exceeds `data.max_corrupt_fraction` of this process's share of the dataset.

The count rides in each example as its number of replaced records, summed by `GrainSource` in
the main process and saved with the iterator state. It cannot be a counter kept where records
are read: with `data.num_workers` > 0 that runs in Grain's worker processes, whose counts would
neither reach the trainer nor follow a checkpoint restore.
"""
import dataclasses
import functools
import math
import os
from typing import Callable

import grain
import numpy as np
from absl import flags
from etils import epath

from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import read_modes, text_reduction
from synthclip_jax.data.shard_files import CorruptRecordError, TFRecordShards
from synthclip_jax.data.shard_index import open_shards
from synthclip_jax.data.text_reduction import tokenize_reduced
from synthclip_jax.data.text_tokenizer import caption_targets, get_text_tokenizer
from synthclip_jax.data.tfrecord import decode_example
from synthclip_jax.data.transforms import decode_crop, random_resized_crop_box
from synthclip_jax.data.worker_cleanup import die_with_parent
from synthclip_jax.train.stage_spec import train_text_length

MAX_REPLACEMENTS = 100  # consecutive bad records tolerated while looking for a good one


@dataclasses.dataclass
class LoadExample(grain.transforms.RandomMap):
    """Record index -> one training example {'image': uint8 (S, S, 3), 'text': int32 (L,),
    'corrupt': int}: RandomResizedCrop, a random caption, `text_reduction` (to at most
    `partial_tokens` tokens when set). (Evaluation sets load their records themselves,
    center-cropped with every caption: evaluate/retrieval.py.)

    CLIPS (`caption_roles`): 'text' is the partial synthetic caption, 'web_text' the record's
    `web_caption` tokens (its `caption` when it has none), and with `target_length` > 0
    'caption' is the full synthetic caption, int32 (target_length,), the captioner's target."""

    shards: TFRecordShards
    image_size: int
    context_length: int
    rrc_scale: tuple = (0.9, 1.0)
    rrc_ratio: tuple = (3 / 4, 4 / 3)
    skip_corrupt: bool = False
    text_reduction: str = "truncate"  # see text_reduction.py
    # (model.text.tokenizer, model.text.vocab_path): names, not the tokenizer, so that the
    # example loader pickles small into Grain's workers (each loads it once, cached)
    tokenizer: tuple = ("openclip_bpe", "")
    partial_tokens: int = 0  # keep at most this many caption tokens; 0 = the whole context
    caption_roles: bool = False  # CLIPS: also the web caption ('web_text')
    jpeg_draft: bool = False  # data.jpeg_draft: DCT-scaled decode (transforms.decode_crop)
    target_length: int = 0  # CLIPS captioner: also the full caption ('caption'), this long
    with_label: bool = False  # train.task='classify': also the record's class ('label', int32)

    def random_map(self, index, rng: np.random.Generator):
        for corrupt in range(MAX_REPLACEMENTS + 1):
            i = (int(index) + corrupt) % len(self.shards)
            try:
                image, caption, web_caption, label = self.load(i, rng)
            except CorruptRecordError:
                if not self.skip_corrupt:
                    raise
                continue
            tok = get_text_tokenizer(*self.tokenizer)
            text = tokenize_reduced(caption, self.text_reduction, self.context_length, rng, tok,
                                    budget=self.partial_tokens)
            example = {"image": image, "text": text, "corrupt": np.int32(corrupt)}
            if self.with_label:
                example["label"] = np.int32(label)
            if self.caption_roles:
                example["web_text"] = tok([web_caption or caption], self.context_length)[0]
            if self.target_length:
                example["caption"] = caption_targets(tok, [caption], self.target_length)[0]
            return example
        raise CorruptRecordError(f"{MAX_REPLACEMENTS + 1} bad records in a row from record "
                                 f"{index} ({self.shards.location(int(index))})")

    def load(self, i, rng):
        path, offset = self.shards.location(i)
        where = f"{path} at offset {offset}"
        example = decode_example(self.shards[i], where=where)

        def crop(width, height):
            return random_resized_crop_box(width, height, self.rrc_scale, self.rrc_ratio, rng)
        try:
            image = decode_crop(example["image"], crop, self.image_size, self.jpeg_draft)
        except (OSError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
            raise CorruptRecordError(f"undecodable image in {where}: {e}") from e
        if self.with_label and example["label"] is None:  # not corrupt: the wrong data
            raise ValueError(f"{where}: no int64 'label' feature, which train.task='classify' "
                             "trains on; write class images with data_gen.images --prompts "
                             "classnames|templates (or encode_example(label=))")
        captions = example["captions"]
        return (image, captions[rng.integers(len(captions))], example["web_caption"],
                example["label"])


def ensure_flags_parsed():
    # Grain's worker processes read absl flags; outside an absl app (tests, notebooks) nothing
    # parsed them, so take the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def shuffled_indices(num_records: int, seed: int) -> grain.MapDataset:
    """Record indices, an endless sequence of epochs, each its own seeded permutation."""
    return grain.MapDataset.range(num_records).shuffle(seed=seed).repeat()


def subset_order(num_records: int, subset_seed: int) -> np.ndarray:
    """`data.subset_records`' fixed order of all records: the first N of it are the subset of
    size N, so each smaller subset lies inside each larger one (nested scales,
    tools/scaling_sweep.py), whatever the run's seed."""
    return np.random.default_rng(subset_seed).permutation(num_records)


def subset_indices(d, num_records: int, seed: int) -> grain.MapDataset:
    """The first `data.subset_records` records of the fixed order, shuffled every epoch."""
    if d.subset_records > num_records:
        raise ConfigError("data.subset_records", f"data.subset_records={d.subset_records} but "
                          f"data.train={d.train!r} holds {num_records} records; lower it")
    chosen = subset_order(num_records, d.subset_seed)[:d.subset_records]
    return grain.MapDataset.source(chosen).shuffle(seed=seed).repeat()


def ordered_indices(path: str, num_records: int, batch_size: int) -> grain.MapDataset:
    """Record indices from a `data.batch_order` file (tools/similarity_order.py), repeated."""
    with epath.Path(path).open("rb") as f:
        order = np.load(f)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"data.batch_order={path}: expected a 1-D integer array, got "
                         f"{order.dtype} {order.shape}")
    if len(order) == 0 or len(order) % batch_size:
        raise ValueError(f"data.batch_order={path}: {len(order)} indices is not a positive "
                         f"multiple of batch_size={batch_size}")
    if order.min() < 0 or order.max() >= num_records:
        raise ValueError(f"data.batch_order={path}: indices {order.min()}..{order.max()} "
                         f"outside the {num_records} records of data.train")
    return grain.MapDataset.source(order.astype(np.int64)).repeat()


def load_example(config, shards: TFRecordShards, process_count: int = 1) -> LoadExample:
    """The training example loader of `config` over `shards` (read as `data.read_mode` says)."""
    d = config.data
    records = read_modes.records_for(d, shards, process_count)
    return LoadExample(records, d.image_size, train_text_length(config),
                       rrc_scale=tuple(d.rrc_scale), skip_corrupt=d.skip_corrupt,
                       text_reduction=text_reduction.check_mode(d.text_reduction),
                       tokenizer=(config.model.text.tokenizer, config.model.text.vocab_path),
                       partial_tokens=d.partial_caption_tokens,
                       caption_roles=config.loss.two_captions or config.model.captioner.enabled,
                       jpeg_draft=d.get("jpeg_draft", False),
                       # query q predicts token q + 1 of the target (after its SOT)
                       target_length=(config.model.captioner.num_queries + 1
                                      if config.model.captioner.enabled else 0),
                       with_label=config.train.get("task") == "classify")


def train_dataset(config, shards: TFRecordShards, process_index: int, process_count: int,
                  start: int = 0, indices: grain.MapDataset | None = None,
                  seed: int | None = None) -> grain.IterDataset:
    """This process's batches (batch_size / process_count rows; the trainer has checked that it
    divides, `sharding.check_batch_size`, before making any source), from global example
    `start` on (the examples of all processes consumed so far; after a `train.stages`
    batch size switch not a multiple of batch_size). `indices` (global record order) and `seed`
    (of the per-example random choices) replace the config's: SimCLIP's cluster orders
    (train/online_clusters.py)."""
    d = config.data
    load = load_example(config, shards, process_count)
    if indices is None:
        indices = (ordered_indices(d.batch_order, len(shards), config.batch_size) if d.batch_order
                   else subset_indices(d, len(shards), config.seed) if d.get("subset_records")
                   else shuffled_indices(len(shards), config.seed) if d.read_mode == "random"
                   else grain.MapDataset.source(read_modes.block_indices(d, shards, config.seed)))
    return batched(config, indices, load, process_index, process_count, start, seed)


def batched(config, indices: grain.MapDataset, load: grain.transforms.RandomMap,
            process_index: int, process_count: int, start: int = 0,
            seed: int | None = None) -> grain.IterDataset:
    """This process's batches of `load` over `indices` (record indices, or the (source,
    record) pairs of a weighted mixture: data/mixture.py) from global element `start`; `seed`
    of the random choices (default: the config's)."""
    d = config.data
    # Random choices are seeded by the global position, so that the examples do not depend
    # on the number of processes. Element k of process p = global element start + k*P + p
    # (lazily: only this process's elements are ever read), so global batch n holds global
    # elements [n*B, (n+1)*B) on any process count P, and a resume on another count continues.
    # Examples, not batches, go through the read threads: Grain's read-ahead buffer counts
    # elements (default 500, sized for 1-10 KiB records), which for whole decoded batches
    # would hold up to 500 batches (~150 GB at 512 x 224 px) in host memory.
    read = grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=d.read_ahead)
    ds = (indices
          .random_map(load, seed=config.seed if seed is None else seed)
          [start + process_index::process_count]
          .to_iter_dataset(read)
          .batch(config.batch_size // process_count, drop_remainder=True))
    if d.num_workers > 0:
        ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=d.num_workers, per_worker_buffer_size=d.prefetch_per_worker),
            worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    return ds


class GrainSource:
    """The trainer's source interface over a Grain dataset: host-local numpy batches,
    `get_state`/`set_state` for checkpoints, and `stats()`: the skipped corrupt records.

    The saved position is global: the examples all processes have consumed (global batches x
    batch_size), not a Grain iterator state, which counts this process's elements and would
    mean another position on another process count. A run saved on P processes resumes on Q
    with the same global batches from the next step on (SLURM requeue onto fewer nodes, a
    smaller slice): `set_state` rebuilds the dataset from that position (`dataset_from`).
    """

    def __init__(self, dataset_from: Callable[[int], grain.IterDataset],
                 max_corrupt_fraction: float, records_per_epoch: float, global_batch: int,
                 process_count: int):
        self.dataset_from = dataset_from  # global example position -> this process's batches
        self.iterator = None  # built on first use: set_state may move the start
        self.max_corrupt_fraction = max_corrupt_fraction
        self.records_per_epoch = records_per_epoch  # this process's share of data.train
        self.global_batch, self.process_count = global_batch, process_count
        self.corrupt = 0
        self.examples = 0  # this process's
        self.global_examples = 0  # all processes', the saved position

    def __iter__(self):
        return self

    def _iterator(self):
        if self.iterator is None:
            self.iterator = iter(self.dataset_from(self.global_examples))
        return self.iterator

    def __next__(self) -> dict:
        batch = dict(next(self._iterator()))
        self.corrupt += int(np.sum(batch.pop("corrupt")))
        self.examples += len(batch["text"])
        self.global_examples += self.global_batch
        # The fraction is of the records read: every epoch meets the same bad records again.
        epochs = math.ceil(self.examples / self.records_per_epoch)
        allowed = self.max_corrupt_fraction * self.records_per_epoch * epochs
        if self.corrupt > allowed:
            raise CorruptRecordError(
                f"{self.corrupt} corrupt records skipped in {epochs} epoch(s), more than "
                f"data.max_corrupt_fraction allows ({allowed:.1f} for this process)")
        # 'image', 'text', and with CLIPS 'web_text' and 'caption' (LoadExample)
        return {name: np.asarray(value) for name, value in batch.items()}

    def stats(self) -> dict:
        return {"data_corrupt_skipped": self.corrupt}

    def get_state(self) -> dict:
        # Process 0's state is the one saved (orbax writes JSON items from the primary host).
        return {"global_examples": self.global_examples, "process_count": self.process_count,
                "corrupt": self.corrupt, "examples": self.examples}

    def set_state(self, state: dict):
        self.corrupt = int(state["corrupt"])
        self.examples = int(state.get("examples", 0))  # absent in checkpoints before 0.3.0
        if "global_examples" not in state:
            # Earlier checkpoints: a per-process Grain position, valid on the same count only.
            self._iterator().set_state(state["grain"])
            self.global_examples = self.examples * self.process_count
            return
        self.global_examples = int(state["global_examples"])
        if int(state["process_count"]) != self.process_count and self.examples:
            # Process 0's counts, rescaled to this process's share of the same examples.
            examples = self.global_examples // self.process_count
            self.corrupt = round(self.corrupt * examples / self.examples)
            self.examples = examples
        self.iterator = None  # rebuilt from the global position on the next batch


def make_grain_source(config, process_index: int, process_count: int) -> GrainSource:
    shards = open_shards(config.data.train)
    check_enough_records(config, shards)
    if config.data.batch_order:  # a bad order file fails here, not at the first batch
        ordered_indices(config.data.batch_order, len(shards), config.batch_size)
    return GrainSource(
        lambda start: train_dataset(config, shards, process_index, process_count, start),
        config.data.max_corrupt_fraction, len(shards) / process_count, config.batch_size,
        process_count)


def check_enough_records(config, shards: TFRecordShards):
    subset = config.data.get("subset_records", 0)
    if subset:
        subset_indices(config.data, len(shards), config.seed)  # a too-large subset fails here
    if min(len(shards), subset or len(shards)) < config.batch_size:
        # Fewer records than one batch: every batch would hold the same pair more than once,
        # a false negative of itself for the contrastive loss.
        raise ConfigError("batch_size", f"data.train={config.data.train!r} holds {len(shards)} "
                          f"records, fewer than one batch (batch_size={config.batch_size}); add "
                          "data or lower --config.batch_size")
