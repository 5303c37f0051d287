"""Grain pipeline: exact resume, disjoint per-process slices, crops, corrupt-record policy."""
import io

import numpy as np
import pytest
from PIL import Image

from synthclip_jax.config.base import base
from synthclip_jax.data import pipeline, transforms
from synthclip_jax.data.shard_files import (CorruptRecordError, ShardWriter, TFRecordShards,
                                            shard_name)
from synthclip_jax.data.tfrecord import encode_example
from synthclip_jax.data.tokenizer import EOT_ID, tokenize
from synthclip_jax.evaluate.retrieval import RetrievalSet

N = 48


def jpeg(color, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_dataset(folder, n=N, num_shards=3):
    for s in range(num_shards):
        with ShardWriter(str(folder / shard_name("pairs", s, num_shards))) as w:
            for i in range(s, n, num_shards):
                color = (i * 5 % 256, 255 - i * 5 % 256, 128)
                w.write(encode_example(image=jpeg(color), captions=[f"photo {i}", f"picture {i}"],
                                       key=str(i)))
    return str(folder / "*.tfrecord")


def data_config(pattern, **data):
    c = base()
    c.seed, c.batch_size = 7, 8
    c.model.text.context_length = 16
    c.data.update({"source": "tfrecord", "train": pattern, "image_size": 16, "num_workers": 0,
                   **data})
    return c


def batches(source, n):
    return [next(source) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["text"], y["text"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_sequence(tmp_path, workers):
    config = data_config(write_dataset(tmp_path), num_workers=workers)
    straight = batches(pipeline.make_grain_source(config, 0, 1), 9)  # > 1 epoch of 6 batches
    first = pipeline.make_grain_source(config, 0, 1)
    batches(first, 4)
    state = first.get_state()
    resumed = pipeline.make_grain_source(config, 0, 1)
    resumed.set_state(state)
    assert_same(batches(resumed, 5), straight[4:])
    assert straight[0]["image"].shape == (8, 16, 16, 3) and straight[0]["text"].dtype == np.int32


def test_processes_read_disjoint_slices_that_cover_each_epoch():
    for epoch_len in (N, 10):
        order = pipeline.shuffled_indices(epoch_len, seed=3)
        procs = [list(order[p::2][: epoch_len // 2]) for p in range(2)]
        assert not set(procs[0]) & set(procs[1])
        assert sorted(procs[0] + procs[1]) == list(range(epoch_len))
    epochs = [list(order[k * 10:(k + 1) * 10]) for k in range(2)]
    assert sorted(epochs[1]) == list(range(10)) and epochs[0] != epochs[1]  # reshuffled


def test_two_processes_split_each_global_batch(tmp_path):
    """Processes 0 and 1 of 2 together see exactly the records of the 1-process batch."""
    config = data_config(write_dataset(tmp_path))
    record_ids = lambda batch: sorted(tuple(t[2:list(t).index(EOT_ID)]) for t in batch["text"])
    whole = [next(pipeline.make_grain_source(config, 0, 1))]
    halves = [next(pipeline.make_grain_source(config, p, 2)) for p in range(2)]
    assert all(h["text"].shape[0] == 4 for h in halves)
    assert not set(record_ids(halves[0])) & set(record_ids(halves[1]))
    assert sorted(record_ids(halves[0]) + record_ids(halves[1])) == record_ids(whole[0])
    # Augmentation is seeded by global position: rows 0,2,4,6 of the whole batch are process 0's.
    np.testing.assert_array_equal(halves[0]["image"], whole[0]["image"][0::2])
    np.testing.assert_array_equal(halves[1]["text"], whole[0]["text"][1::2])


def test_captions_and_center_crop(tmp_path):
    pattern = write_dataset(tmp_path, n=6, num_shards=1)
    shards = TFRecordShards(pattern)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    # Evaluation reads its records itself: center crop, every caption, in order.
    evaluate = RetrievalSet(pattern, 16, mean, std, 16)
    assert evaluate.images.shape == (6, 16, 16, 3)
    np.testing.assert_allclose(evaluate.images[0, 8, 8], np.array([0, 255, 128]) / 255, atol=0.03)
    np.testing.assert_array_equal(evaluate.tokens[:2], tokenize(["photo 0", "picture 0"], 16))
    train = pipeline.LoadExample(shards, 16, 16)
    out = train.random_map(0, np.random.default_rng(0))
    assert out["image"].shape == (16, 16, 3) and out["corrupt"] == 0
    assert out["image"].dtype == np.uint8  # normalised on the device (image_normalize.py)
    np.testing.assert_allclose(out["image"][8, 8], [0, 255, 128], atol=0.03 * 255)
    seen = {tuple(train.random_map(0, np.random.default_rng(s))["text"]) for s in range(20)}
    assert seen == {tuple(tokenize([c], 16)[0]) for c in ("photo 0", "picture 0")}


def test_text_reduction_in_training_only(tmp_path):
    pattern = write_dataset(tmp_path, n=2, num_shards=1)
    shards = TFRecordShards(pattern)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    # Context 3 keeps one of the two BPE tokens of "photo 0" / "picture 0".
    words = ("photo", "picture", "0")
    train = pipeline.LoadExample(shards, 16, 3, text_reduction="block")
    seen = {tuple(train.random_map(0, np.random.default_rng(s))["text"]) for s in range(40)}
    assert seen == {tuple(tokenize([w], 3)[0]) for w in words}
    evaluate = RetrievalSet(pattern, 16, mean, std, 3)
    np.testing.assert_array_equal(evaluate.tokens[0], tokenize(["photo 0"], 3)[0])  # truncated


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        l, t, r, b = transforms.random_resized_crop_box(300, 200, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= l < r <= 300 and 0 <= t < b <= 200
        area = (r - l) * (b - t) / (300 * 200)
        assert 0.49 <= area <= 1.0
        assert 3 / 4 - 0.02 <= (r - l) / (b - t) <= 4 / 3 + 0.02
    assert transforms.center_crop_box(300, 200) == (50, 0, 250, 200)


def corrupt_one_record(pattern, record=5):
    shards = TFRecordShards(pattern)
    path, offset = shards.location(record)
    raw = bytearray(open(path, "rb").read())
    raw[offset + 20] ^= 0xFF  # inside the payload: its CRC no longer matches
    open(path, "wb").write(bytes(raw))
    return path, offset


def test_corrupt_record_stops_with_file_and_offset(tmp_path):
    pattern = write_dataset(tmp_path)
    path, offset = corrupt_one_record(pattern)
    source = pipeline.make_grain_source(data_config(pattern), 0, 1)
    with pytest.raises(CorruptRecordError, match=rf"{path}.*{offset}|{offset}.*{path}"):
        batches(source, 6)  # one epoch touches every record


def test_corrupt_record_skipped_and_counted_within_fraction(tmp_path):
    pattern = write_dataset(tmp_path)
    corrupt_one_record(pattern)
    config = data_config(pattern, skip_corrupt=True, max_corrupt_fraction=0.05)
    source = pipeline.make_grain_source(config, 0, 1)
    out = batches(source, 6)
    assert source.stats() == {"data_corrupt_skipped": 1}
    assert all(b["image"].shape[0] == 8 for b in out)
    config.data.max_corrupt_fraction = 0.01  # 0.48 records allowed
    with pytest.raises(CorruptRecordError, match="max_corrupt_fraction"):
        batches(pipeline.make_grain_source(config, 0, 1), 6)


def test_corrupt_fraction_is_of_the_records_read_not_one_epoch(tmp_path):
    """The same bad record meets every epoch: 1 per 48 is within 5 % for any number of epochs
    (counting against one epoch's allowance stopped the run in the third epoch)."""
    pattern = write_dataset(tmp_path)
    corrupt_one_record(pattern)
    source = pipeline.make_grain_source(
        data_config(pattern, skip_corrupt=True, max_corrupt_fraction=0.05), 0, 1)
    batches(source, 6 * 4)  # 4 epochs: the record was skipped 4 times, 2.4 allowed per epoch
    assert source.stats() == {"data_corrupt_skipped": 4}


def test_undecodable_image_is_a_corrupt_record(tmp_path):
    with ShardWriter(str(tmp_path / shard_name("bad", 0, 1))) as w:
        w.write(encode_example(image=b"not a jpeg", captions=["x"], key="0"))
    shards = TFRecordShards(str(tmp_path / "*.tfrecord"))
    load = pipeline.LoadExample(shards, 16, 16)
    with pytest.raises(CorruptRecordError, match="undecodable image.*bad-00000-of-00001"):
        load.random_map(0, np.random.default_rng(0))


def test_read_ahead_is_bounded(tmp_path, monkeypatch):
    """The decode threads run at most data.read_ahead examples ahead of what was consumed
    (Grain's default buffer would let them decode hundreds of whole batches)."""
    import threading
    import time
    reads, lock = [0], threading.Lock()
    getitem = TFRecordShards.__getitem__

    def counting_getitem(self, i):
        with lock:
            reads[0] += 1
        return getitem(self, i)

    monkeypatch.setattr(TFRecordShards, "__getitem__", counting_getitem)
    config = data_config(write_dataset(tmp_path), read_threads=4, read_ahead=6)
    source = pipeline.make_grain_source(config, 0, 1)
    next(source)
    time.sleep(1.0)  # let the threads run as far ahead as they may
    assert 8 <= reads[0] <= 8 + 6 + 1, reads[0]
