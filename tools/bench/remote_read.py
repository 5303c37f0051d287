"""Reading training records from object storage: records/s per host for each data.read_mode.

  python -m tools.bench.remote_read [--latency_ms 20] [--records 4096] [--record_kb 25]
      [--threads 16] [--shards 1000]

Runs the pipeline's read stage (the record order of each mode -> this process's positions ->
Grain read threads fetching records, CRC-checked) over `latency://`, a local file system that
waits `--latency_ms` per request (tools/bench/latency_fs.py; real reads underneath), and prints
records/s, requests per record, and the ratio to `random` (one request per record, the mode of
local disks); then the same with no latency (this machine's CPU ceiling for the read stage),
and the rate a host with CPU to spare reaches at the latency: read threads x records per
request / latency. Decoding is left out: it costs the same in every mode and is measured by
tools/bench/input.py. Then the start-up time of a `--shards` shard set: every `.index` read one
after another (the reader before the combined index), concurrently, and the combined index.
"""
import os
import tempfile
import time
from pathlib import Path

import grain
import numpy as np
from absl import app, flags

from synthclip_jax.data import read_modes, shard_index, storage
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.shard_index import open_shards
from tools.bench import latency_fs

flags.DEFINE_float("latency_ms", 20.0, "Wait per request (object storage: ~10-50 ms).")
flags.DEFINE_integer("records", 4096, "Records to write (and to read per mode, random: 1/4).")
flags.DEFINE_integer("record_kb", 25, "Record size (SynthCLIP's 256 px JPEGs: ~25 KB).")
flags.DEFINE_integer("shard_records", 512, "Records per shard.")
flags.DEFINE_integer("threads", 16, "Grain read threads (data.read_threads).")
flags.DEFINE_integer("block", 64, "data.read_block.")
flags.DEFINE_integer("lanes", 16, "data.read_lanes.")
flags.DEFINE_integer("shards", 1000, "Shards in the start-up timing.")
FLAGS = flags.FLAGS


def write_shards(folder: Path, records: int, per_shard: int, size: int) -> str:
    rng = np.random.default_rng(0)
    num = -(-records // per_shard)
    for s in range(num):
        with ShardWriter(str(folder / shard_name("bench", s, num))) as w:
            for _ in range(min(per_shard, records - s * per_shard)):
                w.write(rng.bytes(size))  # the reader checks framing and CRCs, not content
    return str(folder / "bench-*.tfrecord")


class Config:  # the data.* keys the read modes use
    def __init__(self, mode):
        self.read_mode, self.read_block, self.read_lanes = mode, FLAGS.block, FLAGS.lanes


def read_rate(pattern: str, mode: str, count: int) -> tuple[float, float]:
    shards = open_shards(pattern)
    config = Config(mode)
    records = read_modes.records_for(config, shards)
    order = (grain.MapDataset.range(len(shards)).shuffle(seed=0).repeat() if mode == "random"
             else grain.MapDataset.source(read_modes.block_indices(config, shards, 0)))
    ds = order.map(lambda i: len(records[i])).to_iter_dataset(
        grain.ReadOptions(num_threads=FLAGS.threads, prefetch_buffer_size=4 * FLAGS.threads))
    it = iter(ds)
    latency_fs.reset_requests()
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    elapsed = time.perf_counter() - start
    return count / elapsed, latency_fs.requests() / count


def startup(folder: Path) -> dict:
    for s in range(FLAGS.shards):
        with ShardWriter(str(folder / shard_name("start", s, FLAGS.shards))) as w:
            w.write(b"x" * 100)
    pattern = "latency://" + str(folder / "start-*.tfrecord")
    times = {}
    for name, concurrency in (("every .index, one after another", 1),
                              ("every .index, concurrently", storage.CONCURRENCY)):
        old, storage.CONCURRENCY = storage.CONCURRENCY, concurrency
        try:
            t = time.perf_counter()
            open_shards(pattern)
            times[name] = time.perf_counter() - t
        finally:
            storage.CONCURRENCY = old
    shard_index.write_combined_index(folder)
    t = time.perf_counter()
    open_shards(pattern)
    times["combined index (+ concurrent stats)"] = time.perf_counter() - t
    return times


def main(_):
    latency_fs.register(FLAGS.latency_ms / 1000)
    print(f"latency {FLAGS.latency_ms:g} ms per request, {FLAGS.record_kb} KB records, "
          f"{FLAGS.threads} read threads, read_block {FLAGS.block}, read_lanes {FLAGS.lanes}, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pattern = "latency://" + write_shards(folder, FLAGS.records, FLAGS.shard_records,
                                              FLAGS.record_kb * 1024)
        rates, latency = {}, FLAGS.latency_ms / 1000
        for mode in read_modes.READ_MODES:
            count = FLAGS.records // 4 if mode == "random" else FLAGS.records
            rate, per_record = read_rate(pattern, mode, count)
            latency_fs.LatencyFileSystem.latency = 0.0
            ceiling, _ = read_rate(pattern, mode, count)
            latency_fs.LatencyFileSystem.latency = latency
            rates[mode] = rate
            bound = FLAGS.threads / (latency * per_record) if latency else float("inf")
            print(f"{mode:10s} {rate:8.0f} records/s per host  {per_record:.4f} requests/record"
                  f"  ratio {mode}/random = {rate / rates['random']:.2f}  (no latency: "
                  f"{ceiling:.0f}/s; latency-bound: {bound:.0f}/s)")
        (folder / "start").mkdir()
        print(f"start-up, {FLAGS.shards} shards:")
        for name, seconds in startup(folder / "start").items():
            print(f"  {name:40s} {seconds:7.2f} s")


if __name__ == "__main__":
    app.run(main)
