"""Image features of a whole evaluation set, streamed: host memory holds a few batches of
decoded images, never the set.

Process p of P decodes records p, p+P, p+2P, ... (Grain: read threads decode ahead, bounded by
`read_ahead` examples) and brings B/P rows to each global batch of B; the encoder returns every
row's features with its record index and label (tags) to every process, so each process ends
with the (N, E) features of all N records. Padding rows (index -1) fill the last batch.
"""
import dataclasses
import math
import time

import grain
import jax
import numpy as np
from absl import logging

from synthclip_jax.data.transforms import center_crop_box, decode_crop_normalize


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """What turns an encoded image into model input (the center crop of evaluation)."""
    image_size: int
    mean: tuple
    std: tuple
    read_threads: int = 16
    read_ahead: int = 64

    def decode(self, image_bytes, where: str) -> np.ndarray:
        try:
            return decode_crop_normalize(image_bytes, center_crop_box, self.image_size,
                                         np.asarray(self.mean, np.float32),
                                         np.asarray(self.std, np.float32))
        except (OSError, ValueError) as bad:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"cannot decode {where}: {bad}; remove or replace the "
                             "file/record") from bad


class LoadRecord(grain.transforms.Map):
    def __init__(self, reader, preprocess: Preprocess, with_label: bool):
        self.reader, self.preprocess, self.with_label = reader, preprocess, with_label

    def map(self, index):
        size = self.preprocess.image_size
        if index < 0:  # padding
            return {"image": np.zeros((size, size, 3), np.float32),
                    "tags": np.array([-1, -1], np.int32)}
        image_bytes, target = self.reader.record(int(index))
        label = int(target) if self.with_label else -1
        return {"image": self.preprocess.decode(image_bytes, self.reader.where(int(index))),
                "tags": np.array([index, label], np.int32)}


def local_indices(num_records: int, global_batch: int, process_index: int,
                  process_count: int) -> np.ndarray:
    """This process's record indices (strided), padded with -1 to whole batches."""
    local_batch = global_batch // process_count
    num_batches = math.ceil(num_records / global_batch)
    mine = np.arange(process_index, num_records, process_count)
    out = np.full(num_batches * local_batch, -1, np.int64)
    out[:len(mine)] = mine
    return out


def image_features(encoder, params, reader, preprocess: Preprocess, with_label: bool = True,
                   desc: str = "", progress: bool = False):
    """(features (N, E) float32, labels (N,) int32 or None) of all N records of `reader`."""
    process_count, batch = jax.process_count(), encoder.batch_size
    if batch % process_count:
        raise ValueError(f"eval.batch_size={batch} is not divisible by the {process_count} "
                         "processes")
    indices = local_indices(len(reader), batch, jax.process_index(), process_count)
    dataset = (grain.MapDataset.source(indices)
               .map(LoadRecord(reader, preprocess, with_label))
               .to_iter_dataset(grain.ReadOptions(num_threads=preprocess.read_threads,
                                                  prefetch_buffer_size=preprocess.read_ahead))
               .batch(batch // process_count))
    features = labels = None
    bar = progress_bar(len(reader), desc) if progress and jax.process_index() == 0 else None
    start = time.perf_counter()
    for local in dataset:
        out, tags = encoder.encode_local_batch(params, local["image"], local["tags"])
        keep = tags[:, 0] >= 0
        if features is None:
            features = np.zeros((len(reader), out.shape[-1]), np.float32)
            labels = np.full(len(reader), -1, np.int32)
        features[tags[keep, 0]] = out[keep]
        labels[tags[keep, 0]] = tags[keep, 1]
        if bar is not None:
            bar.update(int(keep.sum()))
    if bar is not None:
        bar.close()
    logging.info("%s: %d images encoded in %.1f s", desc or "eval", len(reader),
                 time.perf_counter() - start)
    return features, (labels if with_label else None)


def progress_bar(total: int, desc: str):
    from tqdm import tqdm  # the command line's bar; training logs instead
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
