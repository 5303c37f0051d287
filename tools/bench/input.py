"""Input pipeline throughput per worker count, beside the trainer's consumption rate.

  python -m tools.bench.input [--config configs/vitb16_synthci30m.py] [--workers 0,1,2]
      [--records 2048] [--batch 32] [--train_batch 8]
      [--image_sizes 84,112,160,224] [--jpeg_draft false,true] [--train_batch 0]

Writes `--records` 256 px JPEG records (as SynthCLIP stores images) to a temporary folder, then
times the Grain pipeline of the config (decode, RandomResizedCrop to data.image_size, normalise,
tokenize, batch) for each worker count, and one jitted train step of the config's model at
`--train_batch` on this machine's devices (0: none). The pipeline keeps up when images/s per
worker x workers exceeds the trainer's examples/s. `--image_sizes` / `--jpeg_draft` time each
target size with the full decode and/or the DCT-scaled one (data.jpeg_draft).
"""
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

flags.DEFINE_string("config", "configs/vitb16_synthci30m.py", "Config whose data/model to use.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to time.")
flags.DEFINE_integer("records", 2048, "Synthetic records to write.")
flags.DEFINE_integer("batch", 32, "Pipeline batch size.")
flags.DEFINE_integer("train_batch", 8, "Global batch for the train-step timing.")
flags.DEFINE_integer("train_steps", 3, "Timed train steps (after one warm-up step).")
flags.DEFINE_list("image_sizes", [], "data.image_size values to time (default: the config's).")
flags.DEFINE_list("jpeg_draft", ["false"], "data.jpeg_draft values to time, e.g. false,true.")
FLAGS = flags.FLAGS


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def write_records(folder: Path, n: int):
    from synthclip_jax.data.jpeg import encode_jpeg
    from synthclip_jax.data.shard_files import ShardWriter, shard_name
    from synthclip_jax.data.tfrecord import encode_example

    rng = np.random.default_rng(0)
    with ShardWriter(str(folder / shard_name("bench", 0, 1))) as writer:
        for i in range(n):
            # Smooth colour fields with noise: JPEG sizes like real photos (~10-20 KB).
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC))
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            writer.write(encode_example(image=encode_jpeg(image, 90), key=str(i), captions=[
                f"a synthetic photo number {i} of a colourful scene with some noise"]))
    return str(folder / "*.tfrecord")


def pipeline_rate(config, workers: int, batches: int) -> tuple:
    """(images/s, images per CPU-second of this process): the second, per core and hardly
    moved by other processes on the machine, means something only with 0 workers (the
    workers' own CPU time is not this process's)."""
    from synthclip_jax.data.pipeline import make_grain_source

    config.data.num_workers = workers
    source = make_grain_source(config, 0, 1)
    # Excluded: start-up (worker processes, first reads) and what the buffers fill meanwhile
    # (read-ahead examples, batches prefetched by each worker), which would come out free.
    d = config.data
    warmup = 1 + -(-d.read_ahead // config.batch_size) + workers * d.prefetch_per_worker
    for _ in range(warmup):
        next(source)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(source)
    images = batches * config.batch_size
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def train_rate(config) -> float:
    import jax

    from synthclip_jax import sharding
    from synthclip_jax.train.state import make_train_setup
    from synthclip_jax.train.step import make_train_step

    mesh = sharding.make_mesh(config.mesh)
    setup = make_train_setup(config, mesh)
    state, step = setup.init(), make_train_step(config, setup, mesh)
    size, ctx = config.data.image_size, config.model.text.context_length
    batch = sharding.global_batch({
        "image": np.random.default_rng(0).normal(size=(config.batch_size, size, size, 3))
        .astype(np.float32),
        "text": np.tile(np.arange(ctx, dtype=np.int32), (config.batch_size, 1))}, mesh)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.train_steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return FLAGS.train_steps * config.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    config = load_config(FLAGS.config)
    with tempfile.TemporaryDirectory() as tmp:
        config.data.train = write_records(Path(tmp), FLAGS.records)
        config.batch_size = FLAGS.batch
        batches = max(FLAGS.records // FLAGS.batch, 1)  # the data repeat; warm-up excluded
        for size in map(int, FLAGS.image_sizes or [config.data.image_size]):
            for draft in FLAGS.jpeg_draft:
                config.data.image_size = size
                config.data.jpeg_draft = draft.lower() in ("true", "1", "yes")
                print(f"input pipeline: {FLAGS.records} records of 256 px JPEG -> {size} px, "
                      f"batch {FLAGS.batch}, jpeg_draft={config.data.jpeg_draft}")
                print(f"{'workers':>8} {'images/s':>10} {'per worker':>11} {'per CPU-s':>10}")
                for workers in map(int, FLAGS.workers):
                    rate, per_cpu = pipeline_rate(config, workers, batches)
                    print(f"{workers:>8} {rate:>10.1f} {rate / max(workers, 1):>11.1f} "
                          f"{per_cpu if not workers else float('nan'):>10.1f}", flush=True)
    if not FLAGS.train_batch:
        return
    config.batch_size = FLAGS.train_batch
    rate = train_rate(config)
    print(f"trainer consumes {rate:.1f} examples/s ({FLAGS.config}, batch {FLAGS.train_batch}, "
          "this machine's devices)")


if __name__ == "__main__":
    app.run(main)
