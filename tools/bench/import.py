"""data_gen.import_pairs throughput per core: JPEG pass-through vs re-encode, same run.

  python -m tools.bench.import [--pairs 300] [--cores 32] [--total 30000000]

Builds two miniature SynthCI-30M layouts (tab-separated CSV + images in zip archives): one of
256 x 256 JPEGs (what SynthCLIP stores), which --max-side 256 passes through after its header
and end-of-image check, and one of 512 x 512 JPEGs, which are decoded, resized once and
re-encoded. Imports each with one decoding process (--workers 1: pairs/s per core; the
CSV reading, zip index and shard writing are included) and prints pairs/s per core, the ratio,
and the projected wall time of --total pairs on --cores cores (pairs/s/core x cores, i.e.
assuming the image work scales over --workers and machines, as it has no shared state).
"""
import argparse
import csv
import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_gen import import_pairs


def make_layout(root: Path, n: int, side: int, archives: int = 4) -> Path:
    data = root / "SynthCI-30" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    zips = [zipfile.ZipFile(data / f"{a:04d}.zip", "w", zipfile.ZIP_STORED)
            for a in range(archives)]
    rows = []
    for i in range(n):  # a smooth image + noise: JPEG sizes like photos (~20-40 KB at 256 px)
        small = np.clip(base.astype(int) + rng.integers(-30, 30, base.shape), 0, 255)
        im = Image.fromarray(small.astype(np.uint8)).resize((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        path = f"{i % archives:04d}/{i:08d}.jpg"
        zips[i % archives].writestr(path, buf.getvalue())
        rows.append([path, f"a synthetic photo number {i} of a thing"])
    for z in zips:
        z.close()
    csv_path = root / "SynthCI-30" / "combined_images_and_captions.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["image_path", "caption"])
        w.writerows(rows)
    return csv_path


def time_import(csv_path: Path, out: Path) -> float:
    start = time.perf_counter()
    code = import_pairs.main([
        "--input", str(csv_path), "--image-root", str(csv_path.parent / "data"), "--out",
        str(out), "--num-shards", "4", "--max-side", "256", "--quiet"])
    assert code == 0
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--cores", type=int, default=32)
    p.add_argument("--total", type=int, default=30_000_000)
    args = p.parse_args(argv)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in (("pass-through (256 px JPEG)", 256), ("re-encode (512 px JPEG)", 512)):
            root = Path(tmp) / str(side)
            csv_path = make_layout(root, args.pairs, side)
            seconds = time_import(csv_path, root / "out")
            rates[name] = args.pairs / seconds
            wall = args.total / (rates[name] * args.cores)
            print(f"{name}: {rates[name]:.0f} pairs/s per core; {args.total} pairs on "
                  f"{args.cores} cores: {wall / 3600:.2f} h")
    a, b = rates.values()
    print(f"ratio pass-through/re-encode = {a / b:.2f}")


if __name__ == "__main__":
    main()
