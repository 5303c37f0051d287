"""Weighted mixtures in data.train ("GLOB1:0.75,GLOB2:0.25"): syntax and its checks, source
proportions read back from the batches' captions, per-source epochs, exact resume."""
import collections

import numpy as np
import pytest

from synthclip_jax.config import check as config_check
from synthclip_jax.config.error import ConfigError
from synthclip_jax.data import mixture_spec
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import tokenize
from tests.test_pipeline import assert_same, batches, data_config, jpeg


def write_source(folder, word, n, num_shards=2):
    folder.mkdir()
    for s in range(num_shards):
        with ShardWriter(str(folder / shard_name("pairs", s, num_shards))) as w:
            for i in range(s, n, num_shards):
                w.write(encode_example(image=jpeg((i * 9 % 256, 40, 200)),
                                       captions=[f"{word} {i}"], key=f"{word}{i}"))
    return str(folder / "*.tfrecord")


@pytest.fixture
def two_sources(tmp_path):
    return (write_source(tmp_path / "syn", "alpha", 48),
            write_source(tmp_path / "real", "beta", 20))


def test_parse():
    assert mixture_spec.parse("d/*.tfrecord") is None
    assert mixture_spec.parse("gs://b/x-*.tfrecord") is None
    assert mixture_spec.parse("a/*:3,gs://b/*:1") == [("a/*", 0.75), ("gs://b/*", 0.25)]
    assert mixture_spec.parse("a/*:0.5") == [("a/*", 1.0)]
    for bad in ("a/*,b/*", "a/*:0.8,b/*", "a/*:0,b/*:1", "a/*:-1,b/*:1"):
        with pytest.raises(ConfigError, match="data.train=.*needs a positive weight"):
            mixture_spec.parse(bad)


def test_config_check(two_sources, tmp_path):
    syn, real = two_sources
    config = data_config(f"{syn}:0.8,{real}:0.2")
    config_check.check_data(config)
    config_check.check_paths_exist(config)
    config.data.train = f"{syn}:0.8,{tmp_path}/none/*.tfrecord:0.2"
    with pytest.raises(ConfigError, match="matches no file in .*none"):
        config_check.check_paths_exist(config)
    config.data.train = f"{syn},{real}"
    with pytest.raises(ConfigError, match="needs a positive weight"):
        config_check.check_data(config)
    config.data.train, config.data.batch_order = f"{syn}:1,{real}:1", "order.npy"
    with pytest.raises(ConfigError, match="data.batch_order.*weighted mixture"):
        config_check.check_data(config)


def mixture_source(config):
    """What the trainer gets (data/source.py: make_train_source, one process)."""
    from synthclip_jax.data.source import make_train_source
    return make_train_source(config)


def _sources_of(batch_list):
    """Which source each example came from, read from its caption's first word."""
    alpha, beta = tokenize(["alpha", "beta"])[:, 1]
    words = np.concatenate([b["text"][:, 1] for b in batch_list])
    assert set(np.unique(words)) <= {alpha, beta}
    return (words == beta).astype(int), np.concatenate([b["text"][:, 2] for b in batch_list])


def test_proportions_match_weights(two_sources):
    syn, real = two_sources
    source = mixture_source(data_config(f"{syn}:0.75,{real}:0.25"))
    got = batches(source, 20)  # 160 examples: 120 + 40, i.e. two epochs of the small source
    ids, numbers = _sources_of(got)
    assert ids.mean() == pytest.approx(0.25, abs=0.01)
    for b in range(20):  # every batch holds the proportions: 6 + 2
        assert ids[8 * b: 8 * b + 8].sum() == 2
    stats = source.stats()
    assert (stats["data_mixture/0_examples"], stats["data_mixture/1_examples"]) == (120, 40)
    # each source runs through its own epochs: the 20 beta records twice, each once per epoch
    beta = tokenize([f"beta {i}" for i in range(20)])[:, 2]
    first, second = numbers[ids == 1][:20], numbers[ids == 1][20:]
    assert sorted(first) == sorted(beta) == sorted(second) and list(first) != list(second)


def test_resume_mid_epoch_reproduces_the_batches(two_sources):
    syn, real = two_sources
    config = data_config(f"{syn}:0.6,{real}:0.4")
    straight_source = mixture_source(config)
    straight = batches(straight_source, 9)
    first = mixture_source(config)
    batches(first, 4)
    state = first.get_state()
    resumed = mixture_source(config)
    resumed.set_state(state)
    assert_same(straight[4:], batches(resumed, 5))
    assert resumed.stats() == straight_source.stats()
    counts = collections.Counter(_sources_of(straight)[0])
    assert counts[1] == pytest.approx(0.4 * 72, abs=1)


def test_mixture_pipeline_pickles_for_worker_processes(two_sources):
    """data.num_workers > 0 sends the dataset to Grain's worker processes (the resume test
    with workers runs in test_pipeline for the shared code; ~2 min here)."""
    import pickle
    from synthclip_jax.data import mixture
    from synthclip_jax.data.shard_files import TFRecordShards
    config = data_config("unused")
    ds = mixture.mixture_dataset(config, [TFRecordShards(p) for p in two_sources], [0.5, 0.5],
                                 0, 1)
    again = pickle.loads(pickle.dumps(ds))
    assert_same([next(iter(ds))], [next(iter(again))])
