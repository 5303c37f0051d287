"""Top-k neighbour index of a feature bank, computed on the devices (SimCLIP `--preprocess-neighbors`).

The bank (N, E) is split into equal row blocks, one per device of the mesh (every mesh axis
flattened: the index has no use for data/fsdp/tensor roles). Queries go through in chunks,
replicated: each device scores a chunk against its block (one matmul), keeps its local top k
(`jax.lax.top_k`), and the n * k candidates of all devices are all-gathered and cut to the top k
again. Per device that is O(chunk * N / n) memory and N^2 E / n multiply-adds over the bank, so
30M captions split over a pod slice; `tools/bench/neighbours.py` measures and projects the cost.

Ties rank the lower record index first, on every mesh: `top_k` keeps the lower position of
equal values, each block holds lower indices than the next, and the gather concatenates blocks
in order. `approximate=True` uses `jax.lax.approx_max_k` instead, which on TPU trades recall for
speed (recall_target 0.95) and on CPU/GPU is the same exact top k.
Brute force on the host (`brute_force_neighbours`) is the small-set path and the test reference.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DEVICE_BYTES = 1 << 28  # score-block budget per device and query chunk (256 MiB of float32)


def brute_force_neighbours(features: np.ndarray, k: int):
    """(sims (N, k) float32, ids (N, k) int32): every row's k highest dot products, itself
    included, ties by lower index. O(N^2) on the host."""
    sims = features @ features.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :min(k, len(features))]
    return np.take_along_axis(sims, ids, axis=1).astype(np.float32), ids.astype(np.int32)


@functools.lru_cache(maxsize=16)
def _chunk_fn(mesh, rows: int, num_records: int, k: int, approximate: bool):
    axes = tuple(mesh.axis_names)

    def local(queries, block):
        offset = jax.lax.axis_index(axes) * rows
        sims = jnp.matmul(queries, block.T, precision=jax.lax.Precision.HIGHEST)
        ids = offset + jnp.arange(rows, dtype=jnp.int32)
        sims = jnp.where(ids[None, :] < num_records, sims, -jnp.inf)  # padding rows never win
        if approximate:
            vals, pos = jax.lax.approx_max_k(sims, k, recall_target=0.95)
        else:
            vals, pos = jax.lax.top_k(sims, k)
        # (chunk, n * k), device blocks in order: lower indices first on ties
        vals = jax.lax.all_gather(vals, axes, axis=1, tiled=True)
        cand = jax.lax.all_gather(pos.astype(jnp.int32) + offset, axes, axis=1, tiled=True)
        best, which = jax.lax.top_k(vals, k)
        return best, jnp.take_along_axis(cand, which, axis=1)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes, None)),
                                 out_specs=(P(), P()), check_vma=False))


def layout(num_records: int, k: int, devices: int, query_chunk: int = 0) -> tuple:
    """(rows per device block, queries per chunk) of the search over `num_records`."""
    rows = max(-(-num_records // devices), k)  # every block holds k rows for its local top k
    return rows, query_chunk or int(np.clip(DEVICE_BYTES // (4 * rows), 1, 4096))


def bank_sharding(mesh) -> NamedSharding:
    """The bank's rows split over every device of the mesh."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names), None))


def compile_search(mesh, num_records: int, dim: int, k: int, compile_lowered):
    """The chunk search `top_k_neighbours` runs, lowered from shapes alone and compiled with
    `compile_lowered(lowered)` (the AOT compile mode: a target's devices, nothing allocated).
    -> (executable, rows, chunk)."""
    rows, chunk = layout(num_records, k, mesh.size)
    queries = jax.ShapeDtypeStruct((chunk, dim), jnp.float32, sharding=NamedSharding(mesh, P()))
    bank = jax.ShapeDtypeStruct((rows * mesh.size, dim), jnp.float32,
                                sharding=bank_sharding(mesh))
    lowered = _chunk_fn(mesh, rows, num_records, k, False).lower(queries, bank)
    return compile_lowered(lowered), rows, chunk


def top_k_neighbours(features: np.ndarray, k: int, mesh: jax.sharding.Mesh, *,
                     query_chunk: int = 0, approximate: bool = False, progress=None):
    """(sims (N, k) float32, ids (N, k) int32) of (N, E) `features`: each row's k highest dot
    products with every row (itself included), descending, ties by lower index. Pass
    L2-normalised features for cosine similarity. Every process passes the same features
    and gets the whole result. `progress(done, total)` is called after each query chunk."""
    features = np.asarray(features, np.float32)
    n, dim = features.shape
    k = min(int(k), n)
    if k < 1:
        raise ValueError(f"k={k}: need at least one neighbour of {n} records")
    devices = mesh.size
    rows, chunk = layout(n, k, devices, query_chunk)
    bank = np.zeros((rows * devices, dim), np.float32)
    bank[:n] = features
    bank = jax.make_array_from_callback(bank.shape, bank_sharding(mesh), lambda idx: bank[idx])
    fn = _chunk_fn(mesh, rows, n, k, approximate)
    replicated = NamedSharding(mesh, P())
    out_sims, out_ids = np.empty((n, k), np.float32), np.empty((n, k), np.int32)
    for lo in range(0, n, chunk):
        queries = features[lo:lo + chunk]
        pad = chunk - len(queries)  # one compiled shape for every chunk
        if pad:
            queries = np.concatenate([queries, np.zeros((pad, dim), np.float32)])
        q = jax.make_array_from_callback(queries.shape, replicated, lambda idx: queries[idx])
        sims, ids = fn(q, bank)
        hi = min(lo + chunk, n)
        out_sims[lo:hi] = np.asarray(jax.device_get(sims))[:hi - lo]
        out_ids[lo:hi] = np.asarray(jax.device_get(ids))[:hi - lo]
        if progress is not None:
            progress(hi, n)
    return out_sims, out_ids
