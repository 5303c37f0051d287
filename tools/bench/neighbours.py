"""Cost of SimCLIP's neighbour bank: embedding the captions + the top-k index, per million.

  python -m tools.bench.neighbours [--records 8192] [--embed_dim 512] [--k 32]
      [--embed_captions 64] [--text_size B] [--context 77]

On 8 fake CPU devices (XLA_FLAGS set before jax is imported). Measured here:
- index: `data/neighbours.top_k_neighbours` over `--records` random unit vectors, against the
  peer, host brute force (`brute_force_neighbours`: NumPy matmul + full stable argsort, the
  small-set path), same run, the k similarities of every row checked equal; then per million vectors by the N^2 E law of both (the bank is N x N
  dot products: a million vectors cost (1e6 / N)^2 times the measured N, at the same rate);
- embedding: the text tower of `--text_size` (jitted, sharded like evaluation) over
  `--embed_captions` captions of `--context` tokens, per million captions.
Projected from FLOP counts (matmuls only, synthclip_jax/model_flops.py) for a TPU v4-32 (16 chips,
275 TFLOP/s bf16 each; the index runs in float32 at Precision.HIGHEST, ~6 bf16 passes) and
8 H100 SXM (989 TFLOP/s bf16 dense, 67 TFLOP/s fp32 each), both at `--utilisation`.
"""
import os
import sys

_FLAG = "--xla_force_host_platform_device_count"
if "jax" not in sys.modules and _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from synthclip_jax import sharding  # noqa: E402
from synthclip_jax.data.neighbours import brute_force_neighbours, top_k_neighbours  # noqa: E402

ACCELERATORS = {  # name: (chips, bf16 FLOP/s per chip, float32 FLOP/s per chip for the index)
    "TPU v4-32": (16, 275e12, 275e12 / 6),
    "8 x H100": (8, 989e12, 67e12),
}
MILLION = 1e6


def index_flops(records: float, dim: int) -> float:
    return 2 * records * records * dim


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def text_embed_time(size: str, context: int, captions: int, embed_dim: int) -> tuple:
    """(seconds per caption, forward FLOPs per caption) of the text tower, sharded as in eval."""
    from flax import nnx

    from configs.demo_cpu import get_config
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.model_flops import tower_forward_flops
    from synthclip_jax.models.sizes import text_size
    from synthclip_jax.models.two_tower import build_model

    config = get_config()
    config.model.embed_dim = embed_dim
    config.model.text.update(**text_size(size), context_length=context)
    graphdef, state = nnx.split(build_model(config, 0))
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices())
    encoder = Encoder(graphdef, mesh, batch_size=captions)
    tokens = np.random.default_rng(0).integers(1, 1000, (captions, context)).astype(np.int32)
    encoder.texts(state, tokens)  # compile
    _, seconds = timed(lambda: encoder.texts(state, tokens))
    t = config.model.text
    flops = tower_forward_flops(1, context, t.width, t.depth, int(t.width * t.mlp_ratio),
                                embed_dim)
    return seconds / captions, flops


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.bench.neighbours", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=8192, help="vectors in the measured bank")
    p.add_argument("--embed_dim", type=int, default=512)
    p.add_argument("--k", type=int, default=32, help="neighbours per vector")
    p.add_argument("--embed_captions", type=int, default=64, help="captions timed (0 = skip)")
    p.add_argument("--text_size", default="B", help="text tower size (models/sizes.py)")
    p.add_argument("--context", type=int, default=77)
    p.add_argument("--utilisation", type=float, default=0.4,
                   help="fraction of peak assumed for the projections")
    args = p.parse_args(argv)

    n, dim = args.records, args.embed_dim
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices())
    print(f"{jax.device_count()} x {jax.devices()[0].platform} devices, {os.cpu_count()} CPU "
          f"cores; bank {n} x {dim}, k = {args.k}", flush=True)
    top_k_neighbours(x[:mesh.size * args.k], args.k, mesh)  # compile the small shapes away
    (ours_sims, ours_ids), ours = timed(lambda: top_k_neighbours(x, args.k, mesh))
    (peer_sims, peer_ids), peer = timed(lambda: brute_force_neighbours(x, args.k))
    # Float sums in another order may swap two neighbours within an ulp: compare the values.
    same = bool(np.allclose(ours_sims, peer_sims, atol=1e-5))
    same_ids = float((ours_ids == peer_ids).all(axis=1).mean())
    scale = (MILLION / n) ** 2
    print(f"{'index':<10} {'seconds':>9} {'GFLOP/s':>9} {'s per 1M vectors':>17}")
    for name, seconds in (("ours", ours), ("peer", peer)):
        print(f"{name:<10} {seconds:9.2f} {index_flops(n, dim) / seconds / 1e9:9.1f} "
              f"{seconds * scale:17.0f}")
    print(f"same similarities (atol 1e-5): {same}; rows with identical ids: {same_ids:.2%}")
    print(f"ratio ours/peer = {peer / ours:.2f}  (speed, index of {n} vectors)")

    if args.embed_captions:
        per_caption, caption_flops = text_embed_time(args.text_size, args.context,
                                                     args.embed_captions, dim)
        print(f"embedding: text tower {args.text_size}, context {args.context}: "
              f"{per_caption * 1e3:.1f} ms per caption, {per_caption * MILLION:.0f} s per 1M "
              f"captions ({caption_flops / 1e9:.2f} GFLOP each, "
              f"{caption_flops / per_caption / 1e9:.1f} GFLOP/s)")
    else:
        caption_flops = 0
    print(f"projected at {args.utilisation:.0%} of peak (matmul FLOPs only; top_k not counted):")
    for records in (MILLION, 30 * MILLION):
        for name, (chips, bf16, f32) in ACCELERATORS.items():
            index = index_flops(records, dim) / (chips * f32 * args.utilisation)
            embed = records * caption_flops / (chips * bf16 * args.utilisation)
            print(f"  {records / MILLION:>4.0f}M  {name:<10} embedding {embed:8.1f} s   "
                  f"index {index:8.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
