"""Host memory of zero-shot evaluation: streamed (Grain, batch by batch) vs the old whole-set
decode (every image decoded into one float32 array before encoding).

  python -m tools.bench.eval_memory [--num-images 20000] [--image-size 224] [--old-images 2000]

Writes an ImageFolder of --num-images JPEGs (256 px, 10 classes; a few distinct images copied,
so generating is quick) and runs each way in a fresh process with a tiny ViT at --image-size,
sampling the process's RSS. The streamed run covers all images and prints RSS at each quarter
of them (flat = bounded); the old way is measured on --old-images and half as many (its array
alone is N x S x S x 3 x 4 bytes: 12 GB for 20k at 224 px) and extrapolated linearly.
Ends with `ratio ours/peer = X.XX`: streamed peak RSS growth over the old way's at
--num-images (extrapolated).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_folder(root: Path, num: int):
    from PIL import Image
    rng = np.random.default_rng(0)
    sources = []
    for k in range(16):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        path = root / f"src{k}.jpg"
        Image.fromarray(pixels).resize((256, 256), Image.Resampling.BICUBIC).save(path,
                                                                                   quality=90)
        sources.append(path)
    for i in range(num):
        folder = root / "images" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], folder / f"{i:06d}.jpg")
    return root / "images"


def child(mode: str, folder: str, image_size: int, limit: int):
    import jax
    from flax import nnx

    from synthclip_jax import sharding
    from synthclip_jax.config.base import base
    from synthclip_jax.evaluate import stream, zeroshot
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.models.two_tower import build_model

    config = base()
    config.data.image_size = image_size
    config.model.embed_dim = 16
    config.model.image.update(width=32, depth=1, heads=2, patch_size=32)
    config.model.text.update(width=32, depth=1, heads=2)
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    model = build_model(config, 0)
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(nnx.graphdef(model), mesh, 256)
    params = nnx.to_pure_dict(nnx.state(model))
    data = zeroshot.ZeroShotSet(folder, image_size, config.data.mean, config.data.std)
    if limit:
        reader = data.reader
        reader.paths, reader.labels = reader.paths[:limit], reader.labels[:limit]
    base = rss_mb()
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss_mb())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    if mode == "old":
        features = encoder.images(params, data.images)
        quarters = []
    else:
        # the streamed path, with RSS noted at each quarter of the images
        quarters, n = [], len(data.reader)
        original = encoder.encode_local_batch
        seen = [0]

        def counting(p, images, tags):
            out = original(p, images, tags)
            seen[0] += len(images)
            if len(quarters) < 4 and seen[0] >= (len(quarters) + 1) * n / 4:
                quarters.append(round(rss_mb() - base, 1))
            return out

        encoder.encode_local_batch = counting
        features, _ = stream.image_features(encoder, params, data.reader, data.preprocess)
    seconds = time.perf_counter() - start
    done.set()
    print(json.dumps({"mode": mode, "images": len(data.reader), "seconds": seconds,
                      "base_mb": base, "peak_growth_mb": max(samples + [rss_mb()]) - base,
                      "quarters_mb": quarters, "features": list(features.shape)}))


def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "tools.bench.eval_memory", "--child", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=20000)
    p.add_argument("--old-images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, folder, size, limit = args.child
        return child(mode, folder, int(size), int(limit))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = write_folder(Path(tmp), args.num_images)
        print(f"wrote {args.num_images} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
        ours = run_child("stream", str(folder), str(args.image_size), "0")
        print(f"streamed: {ours['images']} images in {ours['seconds']:.0f} s, RSS growth at each "
              f"quarter {ours['quarters_mb']} MB, peak {ours['peak_growth_mb']:.0f} MB",
              flush=True)
        # The old way at two sizes: its growth per image (the slope) without the constant part
        # (compiled code, buffers) that both ways share.
        small = run_child("old", str(folder), str(args.image_size), str(args.old_images // 2))
        old = run_child("old", str(folder), str(args.image_size), str(args.old_images))
        per_image = ((old["peak_growth_mb"] - small["peak_growth_mb"])
                     / (old["images"] - small["images"]))
        extrapolated = old["peak_growth_mb"] + per_image * (args.num_images - old["images"])
        print(f"old whole-set decode: {small['images']} / {old['images']} images: peak RSS "
              f"growth {small['peak_growth_mb']:.0f} / {old['peak_growth_mb']:.0f} MB "
              f"({per_image:.2f} MB/image; the array alone is "
              f"{args.image_size ** 2 * 12 / 2 ** 20:.2f}); at {args.num_images} images "
              f"~{extrapolated:.0f} MB")
    print(f"ratio ours/peer = {ours['peak_growth_mb'] / extrapolated:.3f}")


if __name__ == "__main__":
    main()
