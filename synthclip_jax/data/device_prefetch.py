"""Batches on the devices before the step asks for them (`data.device_prefetch`).

Wraps a host-batch source (data/source.py): each `next()` returns a global batch already placed
on the mesh (`sharding.global_batch`), and up to `depth` more are being transferred meanwhile,
so the step never waits on a host-to-device copy (flax's `jax_utils.prefetch_to_device` idea,
for sharded global arrays). `device_put` is asynchronous: enqueuing a batch starts its transfer
and returns at once.

Exact resume: the iterator state saved with a checkpoint must be that of the batches the
trainer consumed, not of those merely transferred ahead, so each queued batch carries the
source's state after it; `get_state()` answers the state after the last batch handed out.
"""
import collections

from synthclip_jax import sharding


class DevicePrefetch:
    def __init__(self, source, mesh, depth: int):
        if depth < 0:
            raise ValueError(f"data.device_prefetch={depth} must be >= 0")
        self.source, self.mesh, self.depth = source, mesh, depth
        self.queue = collections.deque()
        # None until a batch is handed out: then nothing is queued, and the source's own state
        # is the one to save (asked lazily: a cluster source has none before `prepare`).
        self.state = None

    def __iter__(self):
        return self

    def _enqueue(self):
        batch = sharding.global_batch(next(self.source), self.mesh)
        self.queue.append((batch, self.source.get_state()))

    def __next__(self):
        if not self.queue:
            self._enqueue()
        batch, self.state = self.queue.popleft()
        while len(self.queue) < self.depth:
            self._enqueue()
        return batch

    def get_state(self):
        return self.source.get_state() if self.state is None else self.state

    def set_state(self, state):
        self.queue.clear()
        self.source.set_state(state)
        self.state = None

    def prepare(self, step: int, params):
        """Forwarded to a source whose order follows the model (SimCLIP's online clusters,
        wrapped with depth 0 so that nothing was drawn ahead of it)."""
        if hasattr(self.source, "prepare"):
            self.source.prepare(step, params)

    def stats(self) -> dict:
        stats = getattr(self.source, "stats", None)
        return stats() if stats else {}
