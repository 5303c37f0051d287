"""SimCLIP's cluster batches from a precomputed top-k neighbour index (data/neighbours.py).

SimCLIP's algorithm (data/similarity.py has it by brute force: one N-long similarity row per
pivot) with each pivot's row replaced by its k nearest neighbours: a cluster's candidates are
the m * neighborhood most similar of the pivot's list that are not yet in the batch, exact
duplicates of the pivot (>= max_sim) ranked last, ties by lower index. That is the brute-force
candidate set whenever the list still holds m * neighborhood examples that are outside the batch
and not duplicates of the pivot, which `neighbours_needed` guarantees for every cluster of a
batch without duplicates (k >= m * neighborhood + the batch's clustered part). With a shorter list the missing members are drawn uniformly from the
examples not in the batch and counted (`ClusterStats.filled`), never silently.

Pivots are drawn uniformly among the examples not in the batch by rejection (the batch is a
tiny part of N), so a batch costs O(clusters * k), not O(N).

The proportion warmup (SimCLIP `--warmup-prop`): the clustered share of a batch starts at
`proportion` and doubles at each listed epoch (capped at 1); it is cut into clusters of
`cluster_size` (one smaller cluster while it is below that).
"""
import dataclasses

import numpy as np

from synthclip_jax.data.similarity import mixed_order


@dataclasses.dataclass
class ClusterStats:
    clusters: int = 0
    filled: int = 0  # cluster members drawn at random: the pivot's neighbour list ran out


def proportion_at(epoch: int, proportion: float, doubling_epochs) -> float:
    """The clustered share of a batch in `epoch` (0-based): doubled at each listed epoch."""
    return min(1.0, proportion * 2 ** sum(1 for e in doubling_epochs if epoch >= e))


def cluster_layout(batch_size: int, proportion: float, cluster_size: int) -> tuple:
    """(examples in clusters, number of clusters) of one batch, as SimCLIP: S = int(B * p),
    max(S // cluster_size, 1) clusters of S // clusters each (a remainder joins the random
    part)."""
    share = int(batch_size * proportion)
    if share < 2:  # a cluster of one is just a random example
        return 0, 0
    num_clusters = max(share // cluster_size, 1)
    return share // num_clusters * num_clusters, num_clusters


def neighbours_needed(batch_size: int, proportion: float, cluster_size: int,
                      neighborhood: int) -> int:
    """k for which every cluster's candidates equal brute force's (self included in the list)."""
    clustered, num_clusters = cluster_layout(batch_size, proportion, cluster_size)
    if not num_clusters:
        return 1
    return clustered // num_clusters * neighborhood + clustered


def neighbour_candidates(ids: np.ndarray, sims: np.ndarray, taken, count: int,
                         max_sim: float = 1.0) -> np.ndarray:
    """The `count` best of one pivot's neighbour list (`ids` and `sims`, best first) not in
    `taken` (a set): by similarity, duplicates (>= max_sim) last, ties by lower index."""
    keep = np.fromiter((int(i) not in taken for i in ids), bool, len(ids))
    ids, sims = ids[keep], sims[keep].copy()
    sims[sims >= max_sim - 1e-6] = -1.0  # as brute force: duplicates only if nothing else
    return ids[np.lexsort((ids, -sims))][:count]


def _draw_untaken(num_records: int, taken, rng: np.random.Generator) -> int:
    while True:
        i = int(rng.integers(num_records))
        if i not in taken:
            return i


def cluster_part(ids: np.ndarray, sims: np.ndarray, size: int, num_clusters: int,
                 neighborhood: int, rng: np.random.Generator, stats: ClusterStats,
                 max_sim: float = 1.0) -> np.ndarray:
    """`size` distinct record indices, sorted, in `num_clusters` clusters, from the (N, k)
    neighbour index `ids`/`sims`."""
    if size % num_clusters:
        raise ValueError(f"cluster part {size} is not divisible by num_clusters={num_clusters}")
    num_records, per_cluster = len(ids), size // num_clusters
    if size > num_records:
        raise ValueError(f"cluster part {size} > {num_records} examples")
    taken = set()
    for _ in range(num_clusters):
        pivot = _draw_untaken(num_records, taken, rng)
        taken.add(pivot)
        if per_cluster == 1:
            continue
        candidates = neighbour_candidates(ids[pivot], sims[pivot], taken,
                                          per_cluster * neighborhood, max_sim)
        if len(candidates) >= per_cluster - 1:
            taken.update(int(i) for i in rng.choice(candidates, per_cluster - 1, replace=False))
        else:
            taken.update(int(i) for i in candidates)
            for _ in range(per_cluster - 1 - len(candidates)):
                taken.add(_draw_untaken(num_records, taken, rng))
                stats.filled += 1
        stats.clusters += 1
    return np.array(sorted(taken), np.int64)


def cluster_order(ids: np.ndarray, sims: np.ndarray, *, batch_size: int, proportion: float,
                  cluster_size: int, neighborhood: int, num_batches: int,
                  rng: np.random.Generator, stats: ClusterStats) -> np.ndarray:
    """(num_batches * batch_size,) record indices: per batch its clusters, then records of
    seeded permutations (similarity.mixed_order)."""
    clustered, num_clusters = cluster_layout(batch_size, proportion, cluster_size)
    return mixed_order(
        lambda: cluster_part(ids, sims, clustered, num_clusters, neighborhood, rng, stats),
        num_records=len(ids), batch_size=batch_size, clustered=clustered,
        num_batches=num_batches, rng=rng)
