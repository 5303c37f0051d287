"""data.read_mode: coalesced and streaming reads give every epoch the same records as random
reads, resume exactly, read each block once (one request per block, none repeated across
processes), and start from one combined index."""
import numpy as np
import pytest

from synthclip_jax.data import shard_index
from synthclip_jax.data.pipeline import make_grain_source
from synthclip_jax.data.read_modes import BlockOrder, BlockReader
from synthclip_jax.data.shapes_demo import write_shards
from synthclip_jax.data.shard_files import TFRecordShards
from tests.test_train_parallel import tiny_train_config
from tools.bench import latency_fs

BLOCK_MODES = ("coalesced", "streaming")
NUM_RECORDS, BATCH = 48, 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    # Uneven shards (48 records in 5: 10/10/10/9/9), so blocks straddle shard ends.
    return write_shards(folder, "shapes", 0, NUM_RECORDS, 5, seed=0, image_size=16)


def config_for(pattern, mode, block=4, lanes=4):
    c = tiny_train_config()
    c.batch_size = BATCH
    c.model.text.update(vocab_size=49408, context_length=16)
    c.data.update(source="tfrecord", train=pattern, num_workers=0, read_mode=mode,
                  read_block=block, read_lanes=lanes)
    return c


@pytest.mark.parametrize("mode", BLOCK_MODES)
@pytest.mark.parametrize("counts,block,lanes", [([10, 7, 13, 5], 4, 3), ([64], 8, 2),
                                               ([3, 1, 9], 16, 4)])
def test_every_record_once_per_epoch(mode, counts, block, lanes):
    order = BlockOrder(counts, mode, block, lanes, seed=3)
    n = sum(counts)
    epochs = [[order[e * n + j] for j in range(n)] for e in range(3)]
    for epoch in epochs:
        np.testing.assert_array_equal(sorted(epoch), np.arange(n))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    again = BlockOrder(counts, mode, block, lanes, seed=3)  # a pure function of the seed
    assert [again[j] for j in reversed(range(n))] == epochs[0][::-1]


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_blocks_are_read_in_one_request_each(mode, shards):
    """Records come back byte for byte as random reads give them, one request per block of
    consecutive records, none in the order's blocks read twice."""
    latency_fs.register(0.0)
    remote = TFRecordShards("latency://" + shards)
    local = TFRecordShards(shards)
    order = BlockOrder([remote.shard_records(s) for s in range(5)], mode, 4, 4, seed=0)
    reader = BlockReader(remote, 4, "global" if mode == "coalesced" else "shard", 10)
    latency_fs.reset_requests()
    got = [reader[order[j]] for j in range(NUM_RECORDS)]
    assert sorted(got) == sorted(local[i] for i in range(NUM_RECORDS))
    # 12 blocks of 4; a block cut by a shard end costs a second request (at most 5 + lanes).
    assert 12 <= latency_fs.requests() <= 12 + 5 + 4, latency_fs.requests()


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_processes_read_disjoint_blocks(mode, shards):
    """Process p of P takes global positions p mod P; with P dividing data.read_lanes it meets
    every block it reads in full: two processes together read each block about once."""
    latency_fs.register(0.0)
    remote = TFRecordShards("latency://" + shards)
    counts = [remote.shard_records(s) for s in range(5)]
    order = BlockOrder(counts, mode, 4, 4, seed=1)
    latency_fs.reset_requests()
    for p in range(2):
        reader = BlockReader(remote, 4, "global" if mode == "coalesced" else "shard", 10)
        for j in range(p, NUM_RECORDS, 2):
            reader[order[j]]
    assert latency_fs.requests() <= 12 + 5 + 4, latency_fs.requests()


def text_rows(source, batches):
    rows = np.concatenate([next(source)["text"] for _ in range(batches)])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_pipeline_epoch_and_resume(mode, shards):
    """Through the whole pipeline: an epoch of batches holds the random mode's examples (each
    record has one caption, so its token row is a function of the record), the order differs,
    and a source restored from a saved state continues with the same batches exactly."""
    epoch = NUM_RECORDS // BATCH
    random_rows = text_rows(make_grain_source(config_for(shards, "random"), 0, 1), epoch)
    config = config_for(shards, mode)
    np.testing.assert_array_equal(text_rows(make_grain_source(config, 0, 1), epoch),
                                  random_rows)
    straight = make_grain_source(config, 0, 1)
    batches = [next(straight) for _ in range(epoch + 2)]  # into the second epoch
    saved = make_grain_source(config, 0, 1)
    for _ in range(epoch - 1):
        next(saved)
    resumed = make_grain_source(config, 0, 1)
    resumed.set_state(saved.get_state())
    for want in batches[epoch - 1:]:
        got = next(resumed)
        for key in ("image", "text"):
            np.testing.assert_array_equal(got[key], want[key])


def test_combined_index_replaces_the_shard_indexes(tmp_path):
    pattern = write_shards(tmp_path, "shapes", 0, 20, 4, seed=0, image_size=16)
    plain = shard_index.open_shards(pattern)
    shard_index.write_combined_index(tmp_path)
    indexes = {p: p.read_bytes() for p in tmp_path.glob("*.tfrecord.index")}
    for p in indexes:
        p.unlink()  # only the combined index is left to say where records are
    combined = shard_index.open_shards(pattern)
    assert [combined[i] for i in range(20)] == [plain[i] for i in range(20)]
    # A shard rewritten since: the combined index is passed over for the shard's own index,
    # which names the problem (here: data after its last record).
    for p, text in indexes.items():
        p.write_bytes(text)
    shard = sorted(tmp_path.glob("*.tfrecord"))[1]
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(ValueError, match="stale index.*00001-of-00004.tfrecord"):
        shard_index.open_shards(pattern)


def test_combined_index_is_one_request_at_start(tmp_path):
    pattern = write_shards(tmp_path, "shapes", 0, 40, 8, seed=0, image_size=16)
    latency_fs.register(0.0)
    latency_fs.reset_requests()
    shard_index.open_shards("latency://" + pattern)
    without = latency_fs.requests()
    shard_index.write_combined_index(tmp_path)
    latency_fs.reset_requests()
    shard_index.open_shards("latency://" + pattern)
    # The 8 `.index` reads are gone: the combined index is read (where before its absence was
    # found) in one request; the stats that catch a changed shard remain.
    assert without - latency_fs.requests() == 8
