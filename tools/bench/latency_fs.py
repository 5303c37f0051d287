"""A local file system that behaves like object storage in one respect: every request waits a
set latency. Registered with fsspec as `latency://` (`latency:///abs/path/*.tfrecord`), so the
data pipeline runs over it unchanged; `requests()` counts what it was asked.

Real reads underneath (fsspec's LocalFileSystem); only the wait and the count are added.
"""
import threading
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "latency"


class LatencyFileSystem(LocalFileSystem):
    protocol = PROTOCOL
    latency = 0.02  # seconds per request; set by the benchmark / test
    _count = {"requests": 0}
    _lock = threading.Lock()
    _inside = threading.local()  # within glob: the listing is one request, as on GCS/S3

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return LocalFileSystem._strip_protocol(path)

    def _request(self):
        if getattr(self._inside, "glob", False):
            return
        with self._lock:
            self._count["requests"] += 1
        if self.latency:
            time.sleep(self.latency)

    def glob(self, path, **kwargs):
        self._request()
        self._inside.glob = True
        try:
            return super().glob(path, **kwargs)
        finally:
            self._inside.glob = False

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._request()  # one request, as a ranged GET (LocalFileSystem's would _open too)
        with open(self._strip_protocol(path), "rb") as f:
            f.seek(start or 0)
            return f.read() if end is None else f.read(end - (start or 0))

    def info(self, path, **kwargs):
        self._request()
        return super().info(path, **kwargs)

    def ls(self, path, detail=False, **kwargs):
        self._request()
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self._request()
        return super()._open(path, mode=mode, **kwargs)


def register(latency: float) -> type:
    LatencyFileSystem.latency = latency
    fsspec.register_implementation(PROTOCOL, LatencyFileSystem, clobber=True)
    return LatencyFileSystem


def requests() -> int:
    return LatencyFileSystem._count["requests"]


def reset_requests():
    with LatencyFileSystem._lock:
        LatencyFileSystem._count["requests"] = 0
