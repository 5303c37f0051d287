"""data_gen.images --engine ray: this worker's chunks as a Ray Data pipeline.

The driver plans as the local engine does (data_gen.images.Plan: settings, images_settings.json,
the chunks whose pairs file is not there yet) and streams those chunks through
`map_batches(ChunkWriter, batch_size=1)`: a pool of --concurrency actors, each holding one
backend (the diffusers pipeline, on --gpus-per-worker GPUs) for its whole life. An actor
generates a chunk with data_gen.images.chunk_samples (the local engine's batches and seeds)
and writes it with write_pairs (temporary name, then rename), so the pairs files are the local
engine's bytes, and a killed job (or a pre-empted actor, which Ray Data retries) leaves only
whole files: run again, it does the missing chunks. Each chunk is its own block, so idle
actors take the next chunk as soon as they are free.
"""
import json
from pathlib import Path

import numpy as np

from data_gen.engine import actor_resources, ray_session
from data_gen.images import Plan, chunk_samples, make_backend, write_pairs
from data_gen.progress import Progress


class ChunkWriter:
    """A Ray Data actor: one backend (model loaded on first use), whole chunks in, files out."""

    def __init__(self, args, settings: dict):
        self.args, self.settings, self.out = args, settings, Path(args.out)
        self.backend = make_backend(args)

    def __call__(self, batch: dict) -> dict:
        counts = []
        for payload in batch["payload"]:
            chunk = json.loads(payload)
            samples = list(chunk_samples(self.args, self.backend, self.settings, chunk))
            write_pairs(self.out / f"pairs-{chunk['chunk']:05d}.tar", samples)
            counts.append(len(samples))
        return {"chunk": batch["chunk"], "samples": np.asarray(counts, dtype=np.int64)}


def run_ray(args) -> int:
    plan = Plan(args)
    if not plan.todo:
        return 0
    ray = ray_session(args.ray_address)
    import ray.data
    resources = actor_resources(ray, args)
    # JSON: the input rows are free-form dicts, which Arrow would force into one schema
    items = [{"chunk": c, "payload": json.dumps(plan.chunk_input(c), ensure_ascii=False)}
             for c in plan.todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ChunkWriter, fn_constructor_kwargs={"args": args, "settings": plan.settings},
        batch_size=1, num_gpus=resources["num_gpus"], num_cpus=resources["num_cpus"],
        compute=ray.data.ActorPoolStrategy(size=resources["concurrency"]))
    print(f"images: ray: {len(items)} chunks on {resources['concurrency']} actors "
          f"({resources['num_gpus']} GPU each)", flush=True)
    total = sum(len(plan.indices(c)) for c in plan.todo)
    with Progress("images (ray)", total, "images") as bar:
        for row in ds.iter_rows():
            bar.update(int(row["samples"]), note=f"chunk {int(row['chunk'])}")
    return 0
