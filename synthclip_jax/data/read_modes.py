"""How training records are fetched from their shards: `data.read_mode`.

  random     one ranged request per record, records in a seeded global permutation per epoch
             (pipeline.shuffled_indices). Right for local disks; on object storage a request
             costs ~20 ms, so 16 read threads give ~800 records/s per process.
  coalesced  blocks of `data.read_block` consecutive records (one request each), the blocks in
             a seeded permutation per epoch; `data.read_lanes` blocks at a time are read
             together, their records shuffled within each block and interleaved.
  streaming  the shards in a seeded order per epoch, cut into `data.read_lanes` lanes that each
             read their run of shards front to back, `data.read_block` records per request;
             the lanes interleaved, records shuffled within each block (a shuffle buffer of
             read_lanes x read_block records, webdataset's / big_vision's way).

Every mode visits every record exactly once per epoch, and the record at each global position
is a pure function of (seed, position): the data position saved in checkpoints is global, so
all modes resume exactly, on any process count. Global position j of a window of `lanes`
blocks belongs to lane j mod lanes, and process p of P takes positions p mod P: when P divides
`data.read_lanes`, each block is read by one process only, and (with local batches of at least
read_lanes x read_block / P rows) by one Grain worker.
"""
import collections
import concurrent.futures
import sys
import threading

import numpy as np
from absl import logging

from synthclip_jax.config.choices import READ_MODES
from synthclip_jax.data.shard_files import TFRecordShards


class BlockOrder:
    """Record indices for every global position, epoch after epoch (a Grain random-access
    source: `grain.MapDataset.source(BlockOrder(...))`)."""

    def __init__(self, counts, mode: str, block: int, lanes: int, seed: int):
        if mode not in ("coalesced", "streaming"):
            raise ValueError(f"BlockOrder mode {mode!r}: coalesced or streaming")
        self.counts = np.asarray(counts, np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.n = int(self.cum[-1])
        self.mode, self.block, self.lanes, self.seed = mode, block, lanes, seed
        self.__setstate__({})

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_plans", "_windows", "_lock")}

    def __setstate__(self, state):
        # Grain's read threads ask for positions concurrently; the caches are shared.
        self.__dict__.update(state, _plans={}, _windows={}, _lock=threading.RLock())

    def __len__(self) -> int:
        return sys.maxsize // max(self.n, 1) * self.n  # endless: as many epochs as fit

    def __getitem__(self, position) -> int:
        epoch, j = divmod(int(position), self.n)
        with self._lock:
            starts = self._plan(epoch)[3]
            w = int(np.searchsorted(starts, j, side="right")) - 1
            return int(self._window(epoch, w)[j - starts[w]])

    def _rng(self, *keys) -> np.random.Generator:
        return np.random.default_rng([self.seed, *keys])

    def _plan(self, epoch: int):
        """(shard read order, its cumulative counts, (windows, lanes) block ids (-1: none),
        window start positions). Blocks cut the epoch's read order: the shards one after
        another in file order (coalesced, whose blocks are then permuted) or in a permuted
        order (streaming, whose lanes then take consecutive runs of blocks)."""
        if epoch not in self._plans:
            rng = self._rng(epoch)
            nb = -(-self.n // self.block)
            if self.mode == "coalesced":
                order = np.arange(len(self.counts))
                ids = np.full(-(-nb // self.lanes) * self.lanes, -1, np.int64)
                ids[:nb] = rng.permutation(nb)
                windows = ids.reshape(-1, self.lanes)
            else:
                order = rng.permutation(len(self.counts))
                per_lane = -(-nb // self.lanes)
                windows = np.arange(self.lanes)[None] * per_lane + np.arange(per_lane)[:, None]
                windows = np.where(windows < nb, windows, -1)
            read_cum = np.concatenate([[0], np.cumsum(self.counts[order])]).astype(np.int64)
            sizes = np.where(windows >= 0, np.minimum(self.block, self.n - windows * self.block),
                             0).sum(axis=1)
            if len(self._plans) > 2:  # the epoch before and this one are enough
                self._plans.pop(min(self._plans))
            self._plans[epoch] = (order, read_cum, windows,
                                  np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        return self._plans[epoch]

    def _records(self, epoch: int, b: int) -> np.ndarray:
        """Record indices of block b of the epoch's read order."""
        order, read_cum, _, _ = self._plan(epoch)
        k = np.arange(b * self.block, min((b + 1) * self.block, self.n), dtype=np.int64)
        s = np.searchsorted(read_cum, k, side="right") - 1
        return self.cum[order[s]] + k - read_cum[s]

    def _window(self, epoch: int, w: int) -> np.ndarray:
        """Records of window w in order: row r holds the r-th (shuffled) record of each block."""
        key = (epoch, w)
        if key not in self._windows:
            windows = self._plan(epoch)[2]
            rng = self._rng(epoch, w)
            table = np.full((self.block, self.lanes), -1, np.int64)
            for lane, b in enumerate(windows[w]):
                if b >= 0:
                    records = self._records(epoch, int(b))
                    table[:len(records), lane] = rng.permutation(records)
            if len(self._windows) > 64:
                self._windows.pop(next(iter(self._windows)))
            self._windows[key] = table[table >= 0]  # row-major: lanes interleaved
        return self._windows[key]


class BlockReader:
    """Records by global index, fetched a block at a time (one ranged request per block, the
    block's other records kept for the threads that want them next); `align` says where blocks
    start: "global" (multiples of `block` in the global record numbering, as
    BlockOrder('coalesced') cuts them; clipped to the shard) or "shard" (multiples of `block`
    from each shard's start, as a streaming lane meets them). A RandomAccessDataSource like the
    TFRecordShards it wraps."""

    def __init__(self, shards: TFRecordShards, block: int, align: str, cached_blocks: int):
        self.shards, self.block, self.align = shards, block, align
        self.cached_blocks = cached_blocks
        self.__setstate__({})

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), _cache=collections.OrderedDict())

    def __len__(self) -> int:
        return len(self.shards)

    def location(self, i) -> tuple[str, int]:
        return self.shards.location(i)

    def block_of(self, i: int) -> tuple[int, int, int]:
        """(shard, first, stop): the records of shard `shard` read with record i."""
        s, j = self.shards.shard_of(i)
        n = self.shards.shard_records(s)
        if self.align == "shard":
            first = j // self.block * self.block
            return s, first, min(first + self.block, n)
        start = self.shards.shard_start(s)
        g = (start + j) // self.block * self.block
        return s, max(g - start, 0), min(g + self.block - start, n)

    def __getitem__(self, i: int) -> bytes:
        s, first, stop = self.block_of(int(i))
        key = (s, first)
        with self._lock:
            future = self._cache.get(key)
            owner = future is None
            if owner:
                future = self._cache[key] = concurrent.futures.Future()
                while len(self._cache) > self.cached_blocks:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        if owner:  # this thread reads; the others wanting the block wait for it
            try:
                future.set_result(self.shards.read_records(s, first, stop))
            except BaseException as e:
                future.set_exception(e)
                with self._lock:
                    self._cache.pop(key, None)
        record = future.result()[int(i) - self.shards.shard_start(s) - first]
        if isinstance(record, Exception):
            raise record
        return record


def check_mode(mode: str) -> str:
    if mode not in READ_MODES:
        raise ValueError(f"data.read_mode={mode!r}; choose one of {READ_MODES}")
    return mode


def block_indices(data_config, shards: TFRecordShards, seed: int) -> BlockOrder:
    counts = [shards.shard_records(s) for s in range(len(shards.paths))]
    return BlockOrder(counts, data_config.read_mode, data_config.read_block,
                      data_config.read_lanes, seed)


def records_for(data_config, shards: TFRecordShards, process_count: int = 1):
    """What LoadExample reads records from: the shards themselves (random), or blocks."""
    if check_mode(data_config.read_mode) == "random":
        return shards
    if data_config.read_lanes % process_count:
        logging.warning("data.read_lanes=%d is not a multiple of the %d processes: processes "
                        "share blocks, and each reads whole blocks for part of their records",
                        data_config.read_lanes, process_count)
    align = "global" if data_config.read_mode == "coalesced" else "shard"
    # Two blocks per lane: a lane's next block arrives while its current one is in use.
    return BlockReader(shards, data_config.read_block, align, 2 * data_config.read_lanes + 2)
