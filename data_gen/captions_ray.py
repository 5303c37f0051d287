"""data_gen.captions --engine ray: every worker file of --num-workers, as one Ray Data job.

The unit of work and of resumption is the local engine's: the file of worker w
(captions-WWWWW-of-NNNNN.jsonl, its concepts w, w+N, ...). The driver skips the files that
exist and sends the others' generation batches (the local engine's batches: same requests,
same order, same --batch-size) through `map_batches(Generator, batch_size=1)`: --concurrency
actors, each holding one backend (vLLM's LLM, or the transformers model) on --gpus-per-worker
GPUs. As soon as all batches of a worker are back, the driver cleans and writes that worker's
stats and .jsonl exactly as the local engine does (data_gen.captions.write_worker, atomic
renames), so a killed job run again redoes only the files not yet written. Each request
carries its own seed (caption_seed), so a caption does not depend on which actor made it.
With vLLM, prefer --num-workers of a few times --concurrency: a file is only written when its
last batch is back.
"""
import json
from collections import defaultdict

import numpy as np

from data_gen.captions import (batches_of, make_backend, output_path, prompt_ids, worker_jobs,
                               write_worker)
from data_gen.engine import actor_resources, ray_session
from data_gen.progress import Progress


class Generator:
    """A Ray Data actor: one backend for its life; a batch of (concept, seed) in, texts out."""

    def __init__(self, args):
        self.backend = make_backend(args)

    def __call__(self, batch: dict) -> dict:
        texts = []
        for payload in batch["payload"]:
            requests = json.loads(payload)
            tokenizer = self.backend.tokenizer
            texts.append(json.dumps(self.backend.generate(
                [prompt_ids(tokenizer, concept) for concept, _ in requests],
                [seed for _, seed in requests]), ensure_ascii=False))
        return {"worker": batch["worker"], "batch": batch["batch"],
                "texts": np.asarray(texts, dtype=object)}


def run_ray(args, concepts: list) -> None:
    pending = [w for w in range(args.num_workers) if not output_path(args, w).exists()]
    print(f"captions: ray: {args.num_workers - len(pending)} of {args.num_workers} worker files "
          "already written", flush=True)
    batches = {w: batches_of(args, worker_jobs(args, concepts, w)) for w in pending}
    for w in [w for w in pending if not batches[w]]:  # more workers than concepts
        write_worker(args, w, [], [])
    items = [{"worker": w, "batch": b, "payload": json.dumps(
                  [[concept, seed] for _, concept, _, seed in batch], ensure_ascii=False)}
             for w in pending for b, batch in enumerate(batches[w])]
    if not items:
        return
    ray = ray_session(args.ray_address)
    import ray.data
    resources = actor_resources(ray, args)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        Generator, fn_constructor_kwargs={"args": args}, batch_size=1,
        num_gpus=resources["num_gpus"], num_cpus=resources["num_cpus"],
        compute=ray.data.ActorPoolStrategy(size=resources["concurrency"]))
    print(f"captions: ray: {len(items)} batches of {len(pending)} workers on "
          f"{resources['concurrency']} actors ({resources['num_gpus']} GPU each)", flush=True)
    texts = defaultdict(dict)  # worker -> batch -> texts, until the worker's file is written
    with Progress("captions (ray)", len(items), "batches") as bar:
        for row in ds.iter_rows():
            w, b = int(row["worker"]), int(row["batch"])
            texts[w][b] = json.loads(row["texts"])
            if len(texts[w]) == len(batches[w]):
                done = texts.pop(w)
                write_worker(args, w, batches[w], [done[k] for k in range(len(batches[w]))])
            bar.update()
