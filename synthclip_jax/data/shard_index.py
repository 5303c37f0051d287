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
from synthclip_jax.data.shard_files import (_FRAMING, _HEADER, CorruptRecordError, TFRecordShards,
                                           _check_header, glob_shards, index_bounds, read_index)
from synthclip_jax.run.files import atomic_path

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
    """{shard name: (size, record lengths)} of a folder's combined index; {} when it has none,
    or when it is damaged (not a zip of the four arrays, arrays that disagree with each other:
    a warning names it and the rebuild command, and the shards' own indexes are read)."""
    path = f"{folder}/{COMBINED}"
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        return {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names, sizes, counts, lengths = (z[k] for k in ("names", "sizes", "counts",
                                                            "lengths"))
        if not len(names) == len(sizes) == len(counts):
            raise ValueError(f"{len(names)} names, {len(sizes)} sizes, {len(counts)} counts")
        if np.any(counts < 0) or int(counts.sum()) != len(lengths):
            raise ValueError(f"counts sum to {int(counts.sum())}, {len(lengths)} lengths")
        ends = np.cumsum(counts)
        parts = np.split(lengths, ends[:-1]) if len(ends) else []
        for name, size, part in zip(names, sizes, parts):
            if np.any(part < _FRAMING) or int(part.sum()) != int(size):
                raise ValueError(f"the record lengths of {name} do not add up to its size")
        return {str(n): (int(s), p) for n, s, p in zip(names, sizes, parts)}
    except Exception as error:  # numpy and zipfile raise many kinds for a damaged file
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        logging.warning("damaged combined index %s (%s): reading the shards' own indexes "
                        "instead; rebuild it with `python -m synthclip_jax.data.shard_index %s`",
                        path, reason, folder)
        return {}


def _last_record_fits(path: str, bounds: np.ndarray) -> bool:
    """Whether the shard has a record header at the combined index's last record offset, with
    the length the index gives (12 bytes read): a cheap check that the index and shard agree.
    Remote shards are not read (a request each)."""
    if len(bounds) < 2 or storage.is_remote(path):
        return True
    with open(path, "rb") as f:
        f.seek(int(bounds[-2]))
        header = f.read(_HEADER)
    try:
        return _check_header(header, path, int(bounds[-2])) + _FRAMING == bounds[-1] - bounds[-2]
    except CorruptRecordError:
        return False


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
        if not _last_record_fits(path, bounds[k]):
            logging.warning("combined index %s/%s disagrees with %s (no record where it says "
                            "the last one starts); reading the shard's own index. Rebuild it "
                            "with `python -m synthclip_jax.data.shard_index %s`", folder,
                            COMBINED, path, folder)
            bounds[k] = None
            missing.append(k)
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
        if not os.path.isdir(folder):
            sys.exit(f"error: {folder} is not a folder: give the folder holding the shards "
                     "(their combined index is written there)")
        out = write_combined_index(folder)
        print(f"{out}: {len(_read_combined(os.path.dirname(out) or '.'))} shards")
