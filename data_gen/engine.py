"""--engine local|ray for the GPU stages (captions, images): the flags, and the Ray plumbing.

local (default): this process generates this worker's share (--worker-index/--num-workers, e.g.
one SLURM array task per GPU). ray: a Ray Data pipeline on the cluster --ray-address names
(default: RAY_ADDRESS or a cluster started here with `ray start`, else a new local one),
`map_batches` over --concurrency actors, each holding the model on --gpus-per-worker GPUs;
images sends this worker's missing chunks, captions every missing worker file. Outputs are the
same bytes either way: the work unit (a chunk of captions, a worker's concept list) is
generated with the same batches and seeds, and written under its final name by atomic rename,
so a killed Ray job run again redoes only the missing units. --out must be a folder that every
Ray node sees (a shared filesystem), since the images actors write there.

Stdlib only (the vLLM stage imports it in its own environment); ray is imported only inside
`ray_session`/`ray_map`, i.e. only with --engine ray.
"""
import argparse
import os

# The argparse names of the engine flags: they change where, not what, a stage generates, so
# they stay out of its fingerprint.
ENGINE_ARGS = ("engine", "ray_address", "concurrency", "gpus_per_worker")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine (see data_gen.engine)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: generate in this process (default); ray: a Ray Data pipeline "
                   "on a Ray cluster (pip install ray[data], see data_gen/requirements.txt)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (e.g. ray://head:10001 or head:6379; default: "
                   "RAY_ADDRESS, a running local cluster, else a new local one)")
    g.add_argument("--concurrency", type=int, default=None, metavar="A",
                   help="Ray actors, each holding one model (default: the cluster's GPUs / "
                   "--gpus-per-worker, or 1 without GPUs)")
    g.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                   help="GPUs per Ray actor (default 1 if the cluster has GPUs, else 0: CPU)")


def check_engine_args(parser: argparse.ArgumentParser, args) -> None:
    if args.engine == "local":
        given = [f for f, v in (("--ray-address", args.ray_address),
                                ("--concurrency", args.concurrency),
                                ("--gpus-per-worker", args.gpus_per_worker)) if v is not None]
        if given:
            parser.error(f"{', '.join(given)}: only with --engine ray")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency {args.concurrency} must be at least 1")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        parser.error(f"--gpus-per-worker {args.gpus_per_worker} must be >= 0")


def ray_session(address):
    """The ray module, connected: to the session this process already has (a test's
    ray.init), else to `address` (None: RAY_ADDRESS or a running local cluster, else a new
    local one)."""
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"--engine ray needs ray ({e}); pip install -r "
                         "data_gen/requirements.txt (it pins ray[data])") from e
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    return ray


def actor_resources(ray, args) -> dict:
    """num_gpus, num_cpus and concurrency of the map_batches actors."""
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (
        1 if cluster_gpus else 0)
    if args.concurrency is not None:
        concurrency = args.concurrency
    else:
        concurrency = max(1, int(cluster_gpus // gpus)) if gpus else 1
    # one CPU for an actor on CPU only; with a GPU the CPU count does not limit placement
    return {"num_gpus": gpus, "num_cpus": 0 if gpus else 1, "concurrency": concurrency}


def for_actors(args, *path_keys: str) -> argparse.Namespace:
    """A copy of `args` with the local paths among `path_keys` (--out, a --model folder) made
    absolute: actors do not run in the driver's working directory."""
    paths = {k: os.path.abspath(getattr(args, k)) for k in path_keys
             if getattr(args, k) and (k == "out" or os.path.exists(getattr(args, k)))}
    return argparse.Namespace(**{**vars(args), **paths})


def ray_map(args, items: list, actor, actor_kwargs: dict, describe: str):
    """Yields the output rows of `map_batches(actor, batch_size=1)` over `items` (one block
    each, so an idle actor takes the next item at once), on --concurrency actors that each
    hold what actor(**actor_kwargs) builds (the model) for their whole life. A failed actor's
    item is retried by Ray Data on another; outputs arrive in completion order."""
    ray = ray_session(args.ray_address)
    import ray.data
    res = actor_resources(ray, args)
    print(f"{describe}: ray: {len(items)} items on {res['concurrency']} actors "
          f"({res['num_gpus']} GPU each)", flush=True)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        actor, fn_constructor_kwargs=actor_kwargs, batch_size=1, num_gpus=res["num_gpus"],
        num_cpus=res["num_cpus"], compute=ray.data.ActorPoolStrategy(size=res["concurrency"]))
    yield from ds.iter_rows()
