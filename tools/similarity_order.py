"""SimCLIP similarity-cluster batches: write a run's record order for `data.batch_order`.

  python -m tools.similarity_order --workdir EMBED_RUN --data 'shards/*.tfrecord' --out order.npy
      [--batch_size 1024] [--num_batches STEPS] [--proportion 1.0] [--cluster_size 16]
      [--neighborhood 1] [--seed 0]

Embeds the first caption of every record with the text tower of EMBED_RUN's latest checkpoint
(SimCLIP's offline mode: one embedding pass before training, with an initial model), then writes
`num_batches` batches of record indices (synthclip_jax/data/similarity.py: per batch
int(batch_size * proportion) examples in clusters of `cluster_size` similar captions, the rest
shuffled). Train with `--config.data.batch_order=order.npy` and the same batch size; the order
repeats if training runs longer. A sidecar ORDER.json records the settings.

Scale: the features (N x E float32) stay in host memory and every cluster scans all N, as in
SimCLIP (COCO's 118k captions: 240 MB at E = 512). For millions of captions, and for SimCLIP's
online mode (re-embedding every epoch with the current model), train with `data.clusters`
instead: it builds a top-k neighbour index on the devices (synthclip_jax/data/neighbours.py).
"""
import argparse
import json
import sys

import numpy as np


def caption_features(config, params, pattern: str) -> np.ndarray:
    """(N, E) L2-normalised text features of every record's first caption, with `params`."""
    import jax
    from flax import nnx

    from synthclip_jax import sharding
    from synthclip_jax.data.shard_files import TFRecordShards
    from synthclip_jax.data.text_tokenizer import tokenizer_of
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.evaluate.record_features import record_features
    from synthclip_jax.models.two_tower import build_model

    graphdef, state = nnx.split(build_model(config, 0))
    nnx.replace_by_pure_dict(state, params)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.local_devices())
    encoder = Encoder(graphdef, mesh, batch_size=256)
    features, _ = record_features(encoder, state, TFRecordShards(pattern), "text",
                                  context_length=config.model.text.context_length,
                                  tokenize=tokenizer_of(config.model.text),
                                  log=lambda line: print(line, flush=True))
    return features


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.similarity_order", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="run whose latest checkpoint embeds captions")
    p.add_argument("--data", default=None, help="TFRecord glob (default: that run's data.train)")
    p.add_argument("--out", required=True, help="output .npy of record indices")
    p.add_argument("--batch_size", type=int, default=0, help="global batch (default: the run's)")
    p.add_argument("--num_batches", type=int, default=0,
                   help="batches to write (default: the run's total_steps)")
    p.add_argument("--proportion", type=float, default=1.0,
                   help="fraction of each batch in similarity clusters (SimCLIP synthesis-prop)")
    p.add_argument("--cluster_size", type=int, default=16, help="examples per cluster")
    p.add_argument("--neighborhood", type=int, default=1,
                   help="draw each cluster from the cluster_size * this most similar captions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.out.endswith(".npy"):
        p.error(f"--out {args.out}: expected a .npy path")

    from synthclip_jax.data.similarity import batch_order
    from synthclip_jax.train.checkpoint import load_params

    config, params, step = load_params(args.workdir)
    batch_size = args.batch_size or config.batch_size
    num_batches = args.num_batches or config.total_steps
    clustered = int(batch_size * args.proportion)
    if not 0 <= args.proportion <= 1 or clustered % args.cluster_size:
        print(f"error: int(batch_size {batch_size} x proportion {args.proportion}) = {clustered} "
              f"must be a multiple of --cluster_size {args.cluster_size}", file=sys.stderr)
        return 2
    pattern = args.data or config.data.train
    print(f"embedding the captions of {pattern} with step {step} of {args.workdir}", flush=True)
    features = caption_features(config, params, pattern)
    order = batch_order(features, batch_size=batch_size, proportion=args.proportion,
                        num_clusters=max(clustered // args.cluster_size, 1),
                        neighborhood=args.neighborhood, num_batches=num_batches, seed=args.seed)
    np.save(args.out, order)
    settings = {**vars(args), "batch_size": batch_size, "num_batches": num_batches,
                "records": len(features)}
    with open(f"{args.out.removesuffix('.npy')}.json", "w") as f:
        json.dump(settings, f, indent=1)
    print(f"wrote {num_batches} batches of {batch_size} ({clustered} clustered) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
