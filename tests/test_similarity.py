"""SimCLIP similarity-cluster batches: the clusters, the batch order, the pipeline, the tool."""
import json

import numpy as np
import pytest

from synthclip_jax.data import pipeline
from synthclip_jax.data.similarity import batch_order, cluster_batch
from synthclip_jax.data.tokenizer import get_tokenizer
from tests.test_convert_openclip import trained_workdir  # noqa: F401
from tests.test_pipeline import data_config, write_dataset


def grouped_features(groups, per_group, dim=32, noise=0.05, seed=0):
    """Unit vectors in `groups` tight, well-separated groups; row i is in group i // per_group."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, groups)))[0].T  # orthonormal
    x = np.repeat(centres, per_group, axis=0) + noise * rng.normal(size=(groups * per_group, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_clusters_are_nearest_neighbour_groups():
    # Clusters of 4: the pivot and 3 of its 4 nearest (SimCLIP: m * neighborhood candidates,
    # the pivot excluded), so groups of 5 hold whole clusters.
    features = grouped_features(groups=8, per_group=5)
    for seed in range(10):
        picked = cluster_batch(features, 4, 1, 1, np.random.default_rng(seed))
        assert len(picked) == 4 and len(set(picked // 5)) == 1
        # Four clusters: distinct, sorted; a later pivot may be a used group's leftover.
        picked = cluster_batch(features, 16, 4, 1, np.random.default_rng(seed))
        assert len(picked) == 16 and list(picked) == sorted(set(picked))
        assert (np.unique(picked // 5, return_counts=True)[1] >= 3).sum() >= 3


def test_neighborhood_draws_among_the_nearest():
    features = grouped_features(groups=4, per_group=9)
    seen = set()
    for seed in range(30):
        picked = cluster_batch(features, 4, 1, 2, np.random.default_rng(seed))
        assert len(set(picked // 9)) == 1  # the 8 nearest of a pivot are its group
        seen.add(tuple(picked))
    assert len(seen) > 10  # random members, not always the 3 nearest


def test_exact_duplicates_of_the_pivot_are_avoided():
    features = grouped_features(groups=2, per_group=4)
    features = np.concatenate([features, features[:1]])  # record 8 duplicates record 0
    pivots = set()
    for seed in range(60):  # clusters of 2: both of {0, 8} only if one is the pivot
        picked = set(cluster_batch(features, 2, 1, 1, np.random.default_rng(seed)))
        pivots |= picked & {0, 8}
        if {0, 8} <= picked:
            pytest.fail(f"seed {seed}: the pivot and its exact duplicate in one cluster")
    assert pivots == {0, 8}


def test_batch_order_random_part_walks_permutations():
    features = grouped_features(groups=8, per_group=3)  # 24 records
    order = batch_order(features, batch_size=8, proportion=0.5, num_clusters=2, neighborhood=1,
                        num_batches=12, seed=0).reshape(12, 8)
    for row in order:  # two clusters of 2; the first pivot's pair is from its own group
        assert len(set(row[:4])) == 4 and len(set(row[:4] // 3)) <= 3
    shuffled = order[:, 4:].reshape(-1)  # 48 = two epochs of 24
    assert sorted(shuffled[:24]) == list(range(24)) and sorted(shuffled[24:]) == list(range(24))
    with pytest.raises(ValueError, match="not divisible by num_clusters=3"):
        cluster_batch(features, 8, 3, 1, np.random.default_rng(0))


def caption_number(tokens) -> int:
    """Record i's captions are "photo i" / "picture i" (the BPE splits numbers into digits)."""
    text = get_tokenizer().decode(tokens).split("<end_of_text>")[0]
    return int("".join(text.replace("<start_of_text>", "").split()[1:]))


def test_pipeline_follows_the_batch_order(tmp_path):
    pattern = write_dataset(tmp_path, n=20, num_shards=1)  # record index == caption number
    order = np.random.default_rng(0).integers(0, 20, size=3 * 8)
    np.save(tmp_path / "order.npy", order)
    config = data_config(pattern, batch_order=str(tmp_path / "order.npy"))
    source = pipeline.make_grain_source(config, 0, 1)
    got = [[caption_number(t) for t in next(source)["text"]] for _ in range(4)]
    assert got == order.reshape(3, 8).tolist() + order[:8].reshape(1, 8).tolist()  # repeats
    np.save(tmp_path / "bad.npy", np.arange(7))
    with pytest.raises(ValueError, match=r"bad\.npy: 7 indices .* batch_size=8"):
        pipeline.make_grain_source(data_config(pattern, batch_order=str(tmp_path / "bad.npy")),
                                   0, 1)
    np.save(tmp_path / "far.npy", np.arange(8) + 15)
    with pytest.raises(ValueError, match=r"indices 15\.\.22 outside the 20 records"):
        pipeline.make_grain_source(data_config(pattern, batch_order=str(tmp_path / "far.npy")),
                                   0, 1)


def test_tool_writes_an_order_the_trainer_reads(trained_workdir, tmp_path):  # noqa: F811
    from tools import similarity_order

    embed_run = trained_workdir
    pattern = write_dataset(tmp_path, n=40, num_shards=1)
    out = tmp_path / "order.npy"
    assert similarity_order.main(["--workdir", str(embed_run), "--data", pattern, "--out",
                                  str(out), "--batch_size", "8", "--num_batches", "5",
                                  "--cluster_size", "4", "--proportion", "0.5"]) == 0
    order = np.load(out)
    assert order.shape == (40,) and order.min() >= 0 and order.max() < 40
    settings = json.loads((tmp_path / "order.json").read_text())
    assert settings["records"] == 40 and settings["num_batches"] == 5
    train = data_config(pattern, batch_order=str(out))
    batch = next(pipeline.make_grain_source(train, 0, 1))
    assert [caption_number(t) for t in batch["text"]] == order[:8].tolist()
