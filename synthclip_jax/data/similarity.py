"""SimCLIP's similarity-cluster batches: hard negatives from caption embeddings.

A batch of B holds S = int(B * proportion) examples in `num_clusters` clusters of S /
num_clusters similar captions, then B - S examples of the ordinary shuffled order. A cluster
(SimCLIP `get_synthesis_batch`): a pivot drawn uniformly from the examples not yet in this
batch; every example's cosine similarity to it, exact duplicates (>= max_sim) demoted to -1 and
examples already in the batch excluded; the m * neighborhood most similar as candidates, of
which m - 1 are drawn without replacement. Brute force over all N examples (N x E per pivot), as
SimCLIP does; `tools/similarity_order.py` writes a whole run's order with this.
"""
import numpy as np


def cluster_batch(features: np.ndarray, size: int, num_clusters: int, neighborhood: int,
                  rng: np.random.Generator, max_sim: float = 1.0) -> np.ndarray:
    """`size` distinct indices of (N, E) L2-normalised `features`, sorted, in clusters."""
    if size % num_clusters:
        raise ValueError(f"cluster part {size} is not divisible by num_clusters={num_clusters}")
    per_cluster = size // num_clusters
    if size > len(features):
        raise ValueError(f"cluster part {size} > {len(features)} examples")
    taken = np.zeros(len(features), bool)
    for _ in range(num_clusters):
        pivot = rng.choice(np.flatnonzero(~taken))
        taken[pivot] = True
        if per_cluster == 1:
            continue
        candidates = brute_force_candidates(features, pivot, taken,
                                            per_cluster * neighborhood, max_sim)
        taken[rng.choice(candidates, per_cluster - 1, replace=False)] = True
    return np.flatnonzero(taken)


def brute_force_candidates(features: np.ndarray, pivot: int, taken: np.ndarray, count: int,
                           max_sim: float = 1.0) -> np.ndarray:
    """The `count` examples most similar to `pivot` among those not `taken` (a bool mask),
    best first, ties by lower index; duplicates of the pivot (>= max_sim) rank last."""
    sim = features @ features[pivot]
    # Duplicates of the pivot (float32 rounding allowed): only if nothing else is left.
    sim[sim >= max_sim - 1e-6] = -1.0
    sim[taken] = -np.inf
    candidates = np.argsort(-sim, kind="stable")[:count]
    return candidates[~taken[candidates]]


def batch_order(features: np.ndarray, *, batch_size: int, proportion: float, num_clusters: int,
                neighborhood: int, num_batches: int, seed: int) -> np.ndarray:
    """(num_batches * batch_size,) record indices: per batch, its clusters then its random part.

    The random part walks seeded permutations of all N examples, epoch after epoch, as an
    ordinary shuffled loader; examples may repeat between the two parts, as in SimCLIP.
    """
    clustered = int(batch_size * proportion)
    rng = np.random.default_rng(seed)
    return mixed_order(
        lambda: cluster_batch(features, clustered, num_clusters, neighborhood, rng),
        num_records=len(features), batch_size=batch_size, clustered=clustered,
        num_batches=num_batches, rng=rng)


def mixed_order(cluster_part, *, num_records: int, batch_size: int, clustered: int,
                num_batches: int, rng: np.random.Generator) -> np.ndarray:
    """`num_batches` batches of `cluster_part()` (`clustered` indices) then the next
    batch_size - clustered indices of seeded permutations of all records, epoch after epoch."""
    shuffled, used = rng.permutation(num_records), 0
    order = []
    for _ in range(num_batches):
        if clustered:
            order.append(cluster_part())
        need = batch_size - clustered
        while need:
            if used == len(shuffled):
                shuffled, used = rng.permutation(num_records), 0
            take = shuffled[used:used + need]
            order.append(take)
            used, need = used + len(take), need - len(take)
    return np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64)
