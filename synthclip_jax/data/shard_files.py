"""TFRecord shard files: framing, CRC, the per-shard index, the writer and the random-access
reader. What a record holds (the `tf.train.Example` schema) is tfrecord.py.

File framing (TensorFlow's): uint64 LE payload length, masked CRC32C of those 8 bytes, payload,
masked CRC32C of the payload. Each shard `X.tfrecord` has `X.tfrecord.index` beside it with one
line "<offset> <record length incl. the 16 framing bytes>" per record, the format of the
`tfrecord` package's tfrecord2idx, so Grain can read record i without scanning the file.

Reading goes through fsspec (`storage.py`; local globs through `etils.epath`), so shard globs
may be local, `gs://bucket/...` (`pip install gcsfs`) or any fsspec protocol; writing is local.
How records are fetched (one request each, or many per request) is `data.read_mode`
(read_modes.py); a folder's `tfrecord_index.npz` (shard_index.py) replaces the per-shard index
reads at start-up.

Rebuild a missing index: python -m synthclip_jax.data.shard_files SHARD [SHARD ...]
"""
import argparse
import collections
import glob
import os
import struct
import sys
import threading
from typing import Iterator, Sequence

import crc32c
import numpy as np
from etils import epath

from synthclip_jax.data import storage
from synthclip_jax.run.files import atomic_path, temp_path

_HEADER = 12  # length (8) + its masked CRC (4)
_FRAMING = 16  # header + payload CRC (4)
_MAX_OPEN_FILES = 64  # per thread; shard sets can exceed the process fd limit


class CorruptRecordError(ValueError):
    """A record that fails its CRC, is truncated, or does not follow the schema."""


def _masked_crc(data) -> int:
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return b"".join([length, struct.pack("<I", _masked_crc(length)), payload,
                     struct.pack("<I", _masked_crc(payload))])


def _check_header(header: bytes, path: str, offset: int) -> int:
    if len(header) < _HEADER:
        raise CorruptRecordError(f"{path} at byte offset {offset}: truncated record header")
    (length,) = struct.unpack("<Q", header[:8])
    if struct.unpack("<I", header[8:12])[0] != _masked_crc(header[:8]):
        raise CorruptRecordError(f"{path} at byte offset {offset}: length CRC mismatch")
    return length


def _check_payload(payload, crc: bytes, length: int, path: str, offset: int) -> None:
    if len(payload) != length or len(crc) != 4:
        raise CorruptRecordError(f"{path} at byte offset {offset}: truncated record "
                                 f"(expected {length} payload bytes)")
    if struct.unpack("<I", crc)[0] != _masked_crc(payload):
        raise CorruptRecordError(f"{path} at byte offset {offset}: payload CRC mismatch")

def shard_name(prefix: str, index: int, num_shards: int) -> str:
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} not in [0, {num_shards})")
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _write_index_atomic(index_path: str, rows) -> None:
    with atomic_path(index_path) as tmp, open(tmp, "w") as f:
        f.writelines(f"{o} {n}\n" for o, n in rows)
        f.flush()
        os.fsync(f.fileno())


class ShardWriter:
    """Writes one shard + index under temporary names and renames both on a clean close.

    The index is renamed first, so an existing final-named shard always has its index.
    """

    def __init__(self, path: str):
        self.path, self._tmp = path, str(temp_path(path))
        self._file = open(self._tmp, "wb")
        self._rows, self._offset = [], 0

    @property
    def num_records(self) -> int:
        return len(self._rows)

    def write(self, serialized: bytes) -> None:
        record = _frame(serialized)
        self._file.write(record)
        self._rows.append((self._offset, len(record)))
        self._offset += len(record)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        _write_index_atomic(self.path + ".index", self._rows)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def glob_shards(pattern) -> list:
    """Sorted matches of a glob (wildcards allowed in any component) on any epath filesystem."""
    pattern = os.fspath(pattern)
    if storage.is_remote(pattern):  # object storage and other fsspec protocols
        return [m for m in storage.glob(pattern)
                if not m.rsplit("/", 1)[-1].startswith(".") or pattern.rsplit("/", 1)[-1]
                .startswith(".")]
    scheme, sep, rest = pattern.rpartition("://")
    parts = rest.split("/")
    n = next((k for k, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    if n == len(parts):  # no wildcard: the path itself, if it exists
        return [pattern] if epath.Path(pattern).exists() else []
    root = "/".join(parts[:n]) or ("/" if n else ".")  # n == 1 and parts[0] == "": "/*..."
    matches = epath.Path(scheme + sep + root).glob("/".join(parts[n:]))
    # as glob.glob: '*' does not match hidden names (our half-written files are hidden)
    return sorted(os.fspath(m) for m in matches
                  if not m.name.startswith(".") or parts[-1].startswith("."))


def read_index(shard_path: str, size: "int | None" = None) -> np.ndarray:
    """(records, 2) rows of offset, length; checked against the shard's `size` (stat'ed when
    not given)."""
    index_path = shard_path + ".index"
    try:
        text = storage.read_bytes(index_path).decode()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"index {index_path} not found for shard {shard_path}; rebuild it with "
            f"`python -m synthclip_jax.data.shard_files {shard_path}`") from None
    lines = text.count("\n") + (not text.endswith("\n") and bool(text))
    try:
        rows = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        rows = None
    if rows is None or rows.size != 2 * lines:
        raise ValueError(f"malformed index {index_path}: expected '<offset> <length>' lines")
    rows = rows.reshape(-1, 2)
    size = storage.size(shard_path) if size is None else size
    starts = np.concatenate([[0], np.cumsum(rows[:, 1])[:-1]]).astype(np.int64)
    if len(rows) and (np.any(rows[:, 1] < _FRAMING) or np.any(rows[:, 0] != starts)):
        raise ValueError(f"index {index_path} is not contiguous/monotonic; rebuild it with "
                         f"`python -m synthclip_jax.data.shard_files {shard_path}`")
    end = int(rows[-1].sum()) if len(rows) else 0
    if end != size:
        what = "truncated shard" if end > size else "stale index (shard has more data)"
        raise ValueError(f"{what}: {index_path} says {len(rows)} records ending at byte {end}, "
                         f"but {shard_path} has {size} bytes")
    return rows


def index_bounds(rows: np.ndarray) -> np.ndarray:
    """read_index rows -> the n + 1 record boundaries (byte offsets) of the shard."""
    return np.append(rows[:, 0], rows[-1].sum() if len(rows) else 0).astype(np.int64)


def _scan(path: str) -> Iterator[tuple[int, int, bytes]]:
    """Yields (offset, record length incl. framing, payload), verifying both CRCs."""
    with open(path, "rb") as f:
        offset = 0
        while header := f.read(_HEADER):
            length = _check_header(header, path, offset)
            payload, crc = f.read(length), f.read(4)
            _check_payload(payload, crc, length, path, offset)
            yield offset, length + _FRAMING, payload
            offset += length + _FRAMING


def build_index(shard_path: str) -> int:
    rows = [(offset, n) for offset, n, _ in _scan(shard_path)]
    _write_index_atomic(shard_path + ".index", rows)
    return len(rows)


class _OpenFile:
    """A read-only file of this thread, closed when dropped (evicted, or with its thread).
    Remote files are not held open: a buffered remote handle fetches megabytes ahead of a
    record; a ranged request fetches the record's bytes only."""

    def __init__(self, path: str):
        self.path = path
        self.file = None if storage.is_remote(path) else open(path, "rb")

    def read(self, offset: int, n: int) -> bytes:
        if self.file is None:
            return storage.read_range(self.path, offset, offset + n)
        self.file.seek(offset)
        return self.file.read(n)

    def __del__(self):
        if self.file is not None:
            self.file.close()


def split_records(data: bytes, bounds: np.ndarray, path: str) -> list:
    """The contiguous records whose byte offsets are `bounds` (n + 1), read as one range `data`
    starting at bounds[0]: per record its payload, or the CorruptRecordError it raises (one
    bad record does not spoil its neighbours)."""
    out, base = [], int(bounds[0])
    for start, end in zip(bounds[:-1], bounds[1:]):
        try:
            out.append(check_record(data[start - base:end - base], path, int(start),
                                    int(end - start)))
        except CorruptRecordError as e:
            out.append(e)
    return out


def check_record(record: bytes, path: str, offset: int, n: int) -> bytes:
    length = _check_header(record[:_HEADER], path, offset)
    if length + _FRAMING != n:
        raise CorruptRecordError(f"{path} at byte offset {offset}: record length {length} "
                                 f"disagrees with the index ({n - _FRAMING})")
    payload = record[_HEADER:_HEADER + length]
    _check_payload(payload, record[_HEADER + length:], length, path, offset)
    return payload


class TFRecordShards:
    """Random access over the records of many shards (a Grain RandomAccessDataSource).

    The record offsets of all shards are loaded once, at construction (every shard's `.index`
    read concurrently, or `bounds` given: shard_index.open_shards reads them from one combined
    index per folder), and travel with the object when it is pickled to Grain's worker
    processes, which therefore read no index.
    Files are opened lazily, per thread (LRU-bounded), so no file position is shared between
    threads or processes. Paths may be local or remote (see the module docstring).
    """

    def __init__(self, pattern_or_paths: "str | Sequence[str]", bounds=None):
        if isinstance(pattern_or_paths, (str, os.PathLike)):
            self.paths = glob_shards(pattern_or_paths)
            if not self.paths:
                raise FileNotFoundError(f"no TFRecord shards match {pattern_or_paths!r}")
        else:
            self.paths = [os.fspath(p) for p in pattern_or_paths]
            if not self.paths:
                raise ValueError("TFRecordShards needs at least one shard path")
        # Record boundaries of each shard: n + 1 byte offsets (records are contiguous).
        self._bounds = self._read_bounds() if bounds is None else list(bounds)
        self._cum = np.cumsum([0] + [len(b) - 1 for b in self._bounds]).astype(np.int64)
        self._local = threading.local()

    def _read_bounds(self) -> list:
        sizes = storage.concurrently(storage.size, self.paths)
        rows = storage.concurrently(lambda k: read_index(self.paths[k], sizes[k]),
                                    range(len(self.paths)))
        return [index_bounds(r) for r in rows]

    def __getstate__(self):
        return {"paths": self.paths, "_cum": self._cum, "_bounds": self._bounds}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def __len__(self) -> int:
        return int(self._cum[-1])

    def _find(self, i: int) -> tuple[int, int, int]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range [0, {len(self)})")
        s, j = self.shard_of(i)
        b = self._bounds[s]
        return s, int(b[j]), int(b[j + 1] - b[j])

    def shard_of(self, i: int) -> tuple[int, int]:
        """(shard, record within the shard) of global record i."""
        s = int(np.searchsorted(self._cum, i, side="right")) - 1
        return s, int(i) - int(self._cum[s])

    def shard_start(self, s: int) -> int:
        """Global index of shard s's first record."""
        return int(self._cum[s])

    def shard_records(self, s: int) -> int:
        return len(self._bounds[s]) - 1

    def read_records(self, s: int, first: int, stop: int) -> list:
        """Records [first, stop) of shard s (payloads or errors, `split_records`): one ranged
        read."""
        b = self._bounds[s][first:stop + 1]
        data = storage.read_range(self.paths[s], int(b[0]), int(b[-1]))
        return split_records(data, b, self.paths[s])

    def location(self, i) -> tuple[str, int]:
        s, offset, _ = self._find(i)
        return self.paths[s], offset

    def _file(self, s: int) -> _OpenFile:
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = collections.OrderedDict()
        if s in files:
            files.move_to_end(s)
        else:
            if len(files) >= _MAX_OPEN_FILES:
                files.popitem(last=False)
            files[s] = _OpenFile(self.paths[s])
        return files[s]

    def __getitem__(self, i: int) -> bytes:
        s, offset, n = self._find(i)
        return check_record(self._file(s).read(offset, n), self.paths[s], offset, n)

def main(argv=None):  # python -m synthclip_jax.data.shard_files SHARD...: (re)build indexes
    parser = argparse.ArgumentParser(
        prog="python -m synthclip_jax.data.shard_files",
        description="(Re)build the .index file beside each TFRecord shard; a folder stands for "
                    "its *.tfrecord shards.")
    parser.add_argument("paths", nargs="+", metavar="SHARD_OR_FOLDER")
    for p in parser.parse_args(argv).paths:
        if os.path.isdir(p):  # a folder: its shards
            shards = glob_shards(os.path.join(p, "*.tfrecord"))
            if not shards:
                sys.exit(f"error: {p} is a folder holding no *.tfrecord shards")
            main(shards)
            continue
        if not os.path.isfile(p):
            sys.exit(f"error: {p}: no such shard file")
        print(f"{p}: indexed {build_index(p)} records")


if __name__ == "__main__":
    main()
