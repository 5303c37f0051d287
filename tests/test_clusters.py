"""Cluster batches from the top-k neighbour index against SimCLIP's brute-force algorithm."""
import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.data.clusters import (ClusterStats, cluster_layout, cluster_order,
                                         cluster_part, neighbour_candidates, neighbours_needed,
                                         proportion_at)
from synthclip_jax.data.neighbours import top_k_neighbours
from synthclip_jax.data.similarity import brute_force_candidates
from tests.test_similarity import grouped_features


def exact_unit_features(n, dim=12, seed=0):
    """Unit vectors of four +-0.5 entries: every dot product is a multiple of 1/4, exact in
    float32 however it is summed, so ties (many) are real and ordered by index alone."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


def test_candidates_equal_brute_force_where_k_covers_the_batch():
    features = exact_unit_features(96)
    features = np.concatenate([features, features[:3]])  # 96..98 duplicate 0..2
    n, batch, m, s = len(features), 32, 4, 2
    k = neighbours_needed(batch, 1.0, m, s) + 1  # + the one duplicate a pivot may have
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices())
    sims, ids = top_k_neighbours(features, k, mesh)
    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(60):
        # a batch under construction: up to batch - m taken, the pivot among them
        taken_ids = rng.choice(n, rng.integers(1, batch - m + 1), replace=False)
        pivot = int(taken_ids[0]) if trial % 3 else int(rng.choice([0, 1, 2, 96, 97]))
        taken_ids = np.union1d(taken_ids, [pivot])
        mask = np.zeros(n, bool)
        mask[taken_ids] = True
        want = brute_force_candidates(features, pivot, mask, m * s)
        got = neighbour_candidates(ids[pivot], sims[pivot], set(taken_ids.tolist()), m * s)
        np.testing.assert_array_equal(got, want)
        compared += 1
    assert compared == 60
    # A short list does not: the brute force reaches beyond the pivot's k neighbours.
    short_sims, short_ids = top_k_neighbours(features, m * s, mesh)
    mask = np.zeros(n, bool)
    mask[ids[5, 1:4]] = mask[5] = True
    taken = set(np.flatnonzero(mask).tolist())
    assert len(neighbour_candidates(short_ids[5], short_sims[5], taken, m * s)) < m * s


def test_cluster_part_groups_and_counts_filled_members():
    features = grouped_features(groups=8, per_group=6)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices())
    sims, ids = top_k_neighbours(features, neighbours_needed(16, 1.0, 4, 1), mesh)
    stats = ClusterStats()
    for seed in range(10):
        picked = cluster_part(ids, sims, 4, 1, 1, np.random.default_rng(seed), stats)
        assert len(picked) == 4 and len(set(picked // 6)) == 1
        picked = cluster_part(ids, sims, 16, 4, 1, np.random.default_rng(seed), stats)
        assert len(picked) == 16 and list(picked) == sorted(set(picked))
    assert stats.filled == 0 and stats.clusters == 50
    # k = 2 (itself + one): a cluster of 4 fills two members at random, and says so
    sims2, ids2 = top_k_neighbours(features, 2, mesh)
    stats = ClusterStats()
    picked = cluster_part(ids2, sims2, 4, 1, 1, np.random.default_rng(0), stats)
    assert len(set(picked.tolist())) == 4 and stats.filled == 2


def test_layout_and_warmup():
    # SimCLIP: p doubles at each listed epoch; S = int(B p); max(S // k, 1) clusters
    epochs = (4, 6, 8)
    assert [proportion_at(e, 1 / 64, epochs) for e in (0, 3, 4, 5, 6, 8, 20)] == [
        1 / 64, 1 / 64, 1 / 32, 1 / 32, 1 / 16, 1 / 8, 1 / 8]
    assert proportion_at(9, 0.5, (1, 2)) == 1.0
    assert cluster_layout(64, 1 / 64, 4) == (0, 0)
    assert cluster_layout(64, 1 / 32, 4) == (2, 1)
    assert cluster_layout(64, 0.5, 4) == (32, 8)
    assert cluster_layout(64, 0.3, 4) == (16, 4)  # int(19.2) = 19 -> 4 clusters of 4


def test_cluster_order_batches():
    features = grouped_features(groups=8, per_group=4)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), jax.devices())
    sims, ids = top_k_neighbours(features, 12, mesh)
    stats = ClusterStats()
    order = cluster_order(ids, sims, batch_size=8, proportion=0.5, cluster_size=2,
                          neighborhood=1, num_batches=6, rng=np.random.default_rng(0),
                          stats=stats).reshape(6, 8)
    for row in order:
        assert len(set(row[:4])) == 4
    assert sorted(order[:, 4:].reshape(-1)[:24].tolist()) == sorted(set(order[:, 4:].reshape(-1)[:24].tolist()))
    with pytest.raises(ValueError, match="not divisible"):
        cluster_part(ids, sims, 8, 3, 1, np.random.default_rng(0), stats)
