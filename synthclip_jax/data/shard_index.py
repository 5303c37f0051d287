"""One combined index for a folder of shards: `DIR/tfrecord_index.npz`.

Start-up on object storage is requests: reading 1,000 shards' `.index` files one after another
at ~20 ms each is 20 s, in every process. The combined index holds every shard's name, size and
record lengths in one file, read with one request per folder; the shards are then only stat'ed
(concurrently) to catch a shard rewritten after its index. Shards the combined index lacks, or
whose size it gives wrong (rewritten since; a warning says to rebuild it), fall back to their
own `.index` files, read concurrently, which say what is wrong if anything is.

The writers (data_gen.write, data_gen.import_pairs, the demo) write it after their shards; for
other folders, or after changing shards:

    python -m synthclip_jax.data.shard_index DIR [DIR ...]
"""
import io
import os
import sys
import zipfile

import numpy as np
from absl import logging

from synthclip_jax.data import storage
from synthclip_jax.data.shard_files import TFRecordShards, glob_shards, index_bounds, read_index
from synthclip_jax.files import atomic_path

COMBINED = "tfrecord_index.npz"


def _split(url: str) -> tuple[str, str]:
    folder, _, name = os.fspath(url).rpartition("/")
    return folder, name


def write_combined_index(folder) -> str:
    """Indexes every `*.tfrecord` of a local folder (from their `.index` files, each checked
    against its shard) into `folder/tfrecord_index.npz`; returns its path."""
    folder = os.fspath(folder)
    paths = glob_shards(os.path.join(folder, "*.tfrecord"))
    sizes = storage.concurrently(storage.size, paths)
    rows = storage.concurrently(lambda ps: read_index(*ps), zip(paths, sizes))
    out = os.path.join(folder, COMBINED)
    lengths = [r[:, 1] for r in rows]
    arrays = {"names": np.array([_split(p)[1] for p in paths], dtype=str),
              "sizes": np.array(sizes, np.int64),
              "counts": np.array([len(x) for x in lengths], np.int64),
              "lengths": np.concatenate(lengths or [np.zeros(0, np.int64)]).astype(np.int64)}
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as z:
        for name, array in arrays.items():
            # np.savez's layout with a fixed member time: the same shards give the same bytes.
            with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    return out


def _read_combined(folder: str) -> dict:
    """{shard name: (size, record lengths)} of a folder's combined index; {} when it has none."""
    try:
        data = storage.read_bytes(f"{folder}/{COMBINED}")
    except FileNotFoundError:
        return {}
    with np.load(io.BytesIO(data)) as z:
        ends = np.cumsum(z["counts"])
        parts = np.split(z["lengths"], ends[:-1]) if len(ends) else []
        return {str(n): (int(s), p) for n, s, p in zip(z["names"], z["sizes"], parts)}


def load_bounds(paths: list) -> list:
    """Per shard, its n + 1 record boundaries (byte offsets). One read of each folder's
    combined index, concurrent stats of the shards, and concurrent `.index` reads of the
    shards it does not hold."""
    folders = sorted({_split(p)[0] for p in paths})
    combined = dict(zip(folders, storage.concurrently(_read_combined, folders)))
    sizes = storage.concurrently(storage.size, paths)
    bounds = [None] * len(paths)
    missing = []
    for k, (path, size) in enumerate(zip(paths, sizes)):
        folder, name = _split(path)
        if name not in combined[folder]:
            missing.append(k)
            continue
        indexed_size, lengths = combined[folder][name]
        if indexed_size != size:
            logging.warning("stale combined index %s/%s: it says %s has %d bytes, the file has "
                            "%d; reading the shard's own index. Rebuild it with `python -m "
                            "synthclip_jax.data.shard_index %s`", folder, COMBINED, path,
                            indexed_size, size, folder)
            missing.append(k)
            continue
        bounds[k] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = storage.concurrently(lambda k: read_index(paths[k], sizes[k]), missing)
    for k, r in zip(missing, rows):
        bounds[k] = index_bounds(r)
    return bounds


def open_shards(pattern) -> TFRecordShards:
    """The shards of a glob, their offsets from the combined indexes where there are some."""
    shards = glob_shards(pattern)
    if not shards:
        raise FileNotFoundError(f"no TFRecord shards match {pattern!r}")
    return TFRecordShards(shards, bounds=load_bounds(shards))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    for folder in sys.argv[1:]:
        out = write_combined_index(folder)
        print(f"{out}: {len(_read_combined(os.path.dirname(out) or '.'))} shards")
