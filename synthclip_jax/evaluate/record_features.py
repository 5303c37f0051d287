"""Features of every training record, in record order: SimCLIP's embedding bank.

Text: each record's first caption, tokenized with truncation; image: the center crop at the
training size (SimCLIP embeds a random caption / a randomly augmented crop, since it reuses its
training loader; ours is deterministic, so a recomputed bank equals the first). Every process
reads every record and holds the (N, E) float32 bank; the encoder shards each batch over the
mesh as evaluation does. A corrupt record stops with its file and offset, or, with
`skip_corrupt`, gets a zero feature (similar to nothing) and is counted.
"""
import time

import numpy as np

from synthclip_jax.config.choices import CLUSTER_MODALITIES as MODALITIES
from synthclip_jax.data.shard_files import CorruptRecordError, TFRecordShards
from synthclip_jax.data.tfrecord import decode_example
from synthclip_jax.data.tokenizer import tokenize as tokenize_bpe
from synthclip_jax.data.transforms import center_crop_box, decode_crop_normalize


def record_features(encoder, params, shards: TFRecordShards, modality: str, *,
                    context_length: int, image_size: int = 0, mean=(0, 0, 0), std=(1, 1, 1),
                    skip_corrupt: bool = False, chunk: int = 4096, log=print,
                    tokenize=tokenize_bpe) -> tuple:
    """-> ((N, E) float32 L2-normalised features, number of corrupt records given zeros).
    `tokenize(texts, context_length)`: the model's tokenizer (`text_tokenizer.tokenizer_of`)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}; choose one of {MODALITIES}")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    features, bad, start = [], 0, time.perf_counter()
    for lo in range(0, len(shards), chunk):
        inputs, ok = [], []
        for i in range(lo, min(lo + chunk, len(shards))):
            path, offset = shards.location(i)
            where = f"{path} at offset {offset}"
            try:
                example = decode_example(shards[i], where=where)
                if modality == "text":
                    inputs.append(example["captions"][0])
                else:
                    try:
                        inputs.append(decode_crop_normalize(example["image"], center_crop_box,
                                                            image_size, mean, std))
                    except (OSError, ValueError) as e:
                        raise CorruptRecordError(f"undecodable image in {where}: {e}") from e
                ok.append(True)
            except CorruptRecordError:
                if not skip_corrupt:
                    raise
                ok.append(False)
        bad += ok.count(False)
        if modality == "text":
            out = encoder.texts(params, tokenize(inputs, context_length)) if inputs else None
        else:
            out = encoder.images(params, np.stack(inputs)) if inputs else None
        block = np.zeros((len(ok), 0 if out is None else out.shape[1]), np.float32)
        if out is not None:
            block[np.asarray(ok)] = out
        features.append(block)
        log(f"  embedded {lo + len(ok)}/{len(shards)} records ({modality}), "
            f"{time.perf_counter() - start:.0f}s")
    dim = max(f.shape[1] for f in features)
    features = [f if f.shape[1] == dim else np.zeros((len(f), dim), np.float32) for f in features]
    return np.concatenate(features).astype(np.float32), bad
