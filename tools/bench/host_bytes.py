"""Bytes per batch that cross from the input pipeline to the device: uint8 pixels (what the
pipeline sends now; the step normalises on the device) against normalised float32 (before).

  python -m tools.bench.host_bytes [--image_size 224] [--batch 32] [--workers 2]

(--batch and --workers are tools.bench.input's flags; the largest worker count is used.)

Builds the Grain pipeline over 256 px JPEG records (tools/bench/input.py's), takes batches, and
prints the image bytes per batch both ways (the host-to-device transfer) and the shared memory
Grain's worker processes hold (workers x data.prefetch_per_worker batches), with the ratio.
Docker's default /dev/shm is 64 MB. (Copy times are not printed: on CPU, jax.device_put of a
float32 array aliases host memory and copies nothing, which would flatter the float path.)
"""
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags

from synthclip_jax.config.base import base
from synthclip_jax.data.pipeline import make_grain_source
from tools.bench.input import write_records

# tools.bench.input defines --batch and --workers; this script reuses them.
flags.DEFINE_integer("image_size", 224, "data.image_size.")
FLAGS = flags.FLAGS


def main(_):
    config = base()
    config.batch_size = FLAGS.batch
    with tempfile.TemporaryDirectory() as tmp:
        config.data.update(train=write_records(Path(tmp), 2 * FLAGS.batch), num_workers=0,
                           image_size=FLAGS.image_size)
        pixels = next(make_grain_source(config, 0, 1))["image"]
    mean, std = np.float32(config.data.mean), np.float32(config.data.std)
    floats = ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    shm = max(int(w) for w in FLAGS.workers) * config.data.prefetch_per_worker
    print(f"{FLAGS.batch} x {FLAGS.image_size} px images per batch")
    for name, images in (("uint8 (now)", pixels), ("float32 (before)", floats)):
        print(f"  {name:17s} {images.nbytes / 2**20:8.2f} MiB per batch  "
              f"{images.nbytes / len(images) / 1024:7.1f} KiB per image  "
              f"shared memory ({shm} batches in flight) {shm * images.nbytes / 2**20:8.1f} MiB")
    print(f"ratio float32/uint8 bytes = {floats.nbytes / pixels.nbytes:.2f}")


if __name__ == "__main__":
    app.run(main)
