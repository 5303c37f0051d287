"""SimCLIP online cluster batches: the order follows the current model; resume is exact."""
import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.models.two_tower import build_model
from synthclip_jax.train.online_clusters import ClusterSource
from tests.test_pipeline import assert_same, data_config, jpeg

COLOURS, ANIMALS, NUMBERS = ("red", "blue", "green", "gold"), ("cat", "dog", "car", "tree"), (
    "one", "two", "six", "ten")
CAPTIONS = [" ".join(words) for words in itertools.product(COLOURS, ANIMALS, NUMBERS)]  # 64


def write_captions(folder):
    with ShardWriter(str(folder / shard_name("pairs", 0, 1))) as w:
        for i, caption in enumerate(CAPTIONS):
            w.write(encode_example(image=jpeg((i * 4, 255 - i * 4, 128)), captions=[caption],
                                   key=str(i)))
    return str(folder / "*.tfrecord")


def config_for(pattern, **clusters):
    c = data_config(pattern)
    c.batch_size, c.seed = 16, 3
    c.model.embed_dim = 16
    c.model.image.update(width=16, depth=1, heads=2, patch_size=8)
    c.model.text.update(width=16, depth=1, heads=2, causal=False, pool_type="mean")
    c.eval.batch_size = 32
    c.data.clusters.update({**dict(enabled=True, cluster_size=4, proportion=0.5,
                                   warmup_epochs=(), every_steps=0), **clusters})
    return c


def planted_params(config, strong_words, seed=0):
    """A text tower that embeds a caption by its word from `strong_words` (4 orthogonal
    directions), the other words a little jitter: the blocks pass x through unchanged (their
    output projections zero), the token embedding plants the groups."""
    params = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(build_model(config, 0))))
    text = params["text"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(text["transformer"]):
        if any(name in jax.tree_util.keystr(path) for name in ("out_proj", "c_proj")):
            leaf[...] = 0  # the residual branches add nothing
    rng = np.random.default_rng(seed)
    emb = np.zeros(text["token_embedding"].shape, np.float32)
    for w, word in enumerate(strong_words):
        emb[tokenize([word], 3)[0, 1], w] = 10.0  # direction w
    # LayerNorm scales each position alike: the other words share one direction (dims 8-15)
    # and differ by a little jitter, so they barely move a caption's feature.
    common = np.r_[np.zeros(8), np.tile([1.0, -1.0], 4)]
    for words in (COLOURS, ANIMALS, NUMBERS):
        if words is not strong_words:
            for word in words:
                emb[tokenize([word], 3)[0, 1]] = common + 0.1 * rng.normal(size=emb.shape[1])
    text["token_embedding"] = emb
    text["positional_embedding"] = np.zeros_like(text["positional_embedding"])
    text["text_projection"] = np.eye(*text["text_projection"].shape, dtype=np.float32)
    return params


def group_of(records, words):
    return {next(w for w in words if w in CAPTIONS[r].split()) for r in records}


def clusters_of(order, batch_size, clustered, size):
    for batch in order.reshape(-1, batch_size):
        yield from batch[:clustered].reshape(-1, size)  # sorted indices, not by cluster


def test_next_epoch_follows_the_new_embeddings(tmp_path):
    config = config_for(write_captions(tmp_path))
    graphdef = nnx.graphdef(build_model(config, 0))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    source = ClusterSource(config, graphdef, mesh, tmp_path / "run")
    assert source.period == 4  # 64 records / 16
    by_colour, by_animal = planted_params(config, COLOURS), planted_params(config, ANIMALS)
    source.prepare(0, by_colour)
    epoch0 = source.load_order(0)
    for step in range(1, 4):
        next(source)
        source.prepare(step, by_animal)  # mid-epoch: the order stays
    next(source)
    source.prepare(4, by_animal)
    epoch1 = source.load_order(4)
    # The clustered half (8 = 2 clusters of 4) of each batch is whole groups of 4 of the
    # planted word: the cluster part is sorted, so check each batch's 8 in the grouping
    # (two groups or one), and the other grouping mixes them.
    for order, words, other in ((epoch0, COLOURS, ANIMALS), (epoch1, ANIMALS, COLOURS)):
        mixed = 0
        for batch in order.reshape(-1, 16):
            part = batch[:8]
            counts = [sum(w in CAPTIONS[r].split() for r in part) for w in words]
            assert sorted(c for c in counts if c) in ([4, 4], [8]), (words, counts)
            other_counts = [sum(w in CAPTIONS[r].split() for r in part) for w in other]
            mixed += sorted(c for c in other_counts if c) not in ([4, 4], [8])
        assert mixed >= 3  # the other grouping does not explain the clusters
    assert len(set(epoch0.reshape(-1, 16)[:, 8:].reshape(-1))) == 32  # half a permutation


@pytest.mark.parametrize("online", [True, False])
def test_resume_mid_epoch_reproduces_the_batches(tmp_path, online):
    pattern = write_captions(tmp_path)
    config = config_for(pattern, online=online, proportion=0.25, warmup_epochs=(1,))
    graphdef = nnx.graphdef(build_model(config, 0))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    by_colour, by_animal = planted_params(config, COLOURS), planted_params(config, ANIMALS)
    params_at = lambda step: by_colour if step < 4 else by_animal  # noqa: E731

    def run(workdir, steps, source=None):
        source = source or ClusterSource(config, graphdef, mesh, workdir)
        out = []
        for step in steps:
            source.prepare(step, params_at(step))
            out.append(next(source))
        return source, out

    _, straight = run(tmp_path / "a", range(10))
    first, head = run(tmp_path / "b", range(6))
    state = first.get_state()
    resumed = ClusterSource(config, graphdef, mesh, tmp_path / "b")
    resumed.set_state(state)
    _, tail = run(None, range(6, 10), resumed)
    assert_same(straight, head + tail)
    info0, info1 = (np.load(tmp_path / "a" / "clusters" / f"order-{s:09d}.npy") for s in (0, 4))
    assert not np.array_equal(info0, info1)
    # warmup: epoch 0 clusters 4 of 16 (one cluster), epoch 1 doubled: 8 (two clusters)
    import json
    meta = [json.loads((tmp_path / "a" / "clusters" / f"order-{s:09d}.json").read_text())
            for s in (0, 4, 8)]
    assert [m["clustered"] for m in meta] == [4, 8, 8]
    if not online:  # the bank of step 0 serves every period
        assert (tmp_path / "a" / "clusters" / "neighbours.npz").exists()
        assert group_of(info1.reshape(-1, 16)[0, :4], COLOURS).__len__() == 1
    # A resume whose period's order is gone says so.
    for f in (tmp_path / "b" / "clusters").glob("order-000000004.npy"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="order-000000004.npy"):
        ClusterSource(config, graphdef, mesh, tmp_path / "b").set_state(state)


def test_record_features_equal_evaluation_inputs(tmp_path):
    from synthclip_jax.data.shard_files import TFRecordShards
    from synthclip_jax.evaluate.encode import Encoder
    from synthclip_jax.evaluate.record_features import record_features
    from synthclip_jax.evaluate.retrieval import RetrievalSet

    pattern = write_captions(tmp_path)
    config = config_for(pattern)
    graphdef, state = nnx.split(build_model(config, 0))
    mesh = sharding.make_mesh(config.mesh, jax.devices())
    encoder = Encoder(graphdef, mesh, 24)  # 64 records: a padded last batch
    d = config.data
    ref = RetrievalSet(pattern, d.image_size, d.mean, d.std, 16)  # center crops, captions
    common = dict(context_length=16, image_size=d.image_size, mean=d.mean, std=d.std, chunk=40)
    images, bad = record_features(encoder, state, TFRecordShards(pattern), "image", **common)
    np.testing.assert_allclose(images, encoder.images(state, ref.images), atol=1e-6)
    texts, _ = record_features(encoder, state, TFRecordShards(pattern), "text", **common)
    np.testing.assert_allclose(texts, encoder.texts(state, tokenize(CAPTIONS, 16)), atol=1e-6)
    assert bad == 0 and images.shape == (64, 16)
