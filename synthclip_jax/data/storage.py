"""Bytes of shard files on any fsspec file system: local paths, `gs://` (gcsfs), `s3://`, or a
test protocol registered with fsspec (tools/bench/remote_read.py's latency-adding one).

On object storage every call is a request of tens of milliseconds, so the helpers here make
one request per call (`cat_file` with a byte range, never a buffered handle that reads ahead
megabytes), and the many-file helpers run their requests concurrently.
"""
import concurrent.futures
import functools
import os

import fsspec

CONCURRENCY = 64  # requests in flight for the many-file helpers (index loads, stats)


@functools.lru_cache(maxsize=None)
def _filesystem(protocol: str):
    return fsspec.filesystem(protocol)


def filesystem(url) -> tuple:
    """(fsspec file system, path on it); the file system object is made once per process."""
    url = os.fspath(url)
    protocol, path = fsspec.core.split_protocol(url)
    fs = _filesystem(protocol or "file")
    return fs, fs._strip_protocol(url)


def is_remote(url) -> bool:
    return fsspec.core.split_protocol(os.fspath(url))[0] not in (None, "file")


def read_range(url, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file: one request."""
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


def read_bytes(url) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def size(url) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def exists(url) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def glob(pattern) -> list:
    """Sorted matches, with the pattern's protocol kept."""
    protocol, _ = fsspec.core.split_protocol(os.fspath(pattern))
    fs, path = filesystem(pattern)
    found = fs.glob(path)
    return sorted(found if protocol in (None, "file") else [f"{protocol}://{p}" for p in found])


def concurrently(fn, items, concurrency: "int | None" = None) -> list:
    """[fn(x) for x in items] with up to `concurrency` (default CONCURRENCY) calls in flight
    (requests wait on I/O)."""
    items = list(items)
    concurrency = concurrency or CONCURRENCY
    if len(items) <= 1:
        return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(min(concurrency, len(items))) as pool:
        return list(pool.map(fn, items))
