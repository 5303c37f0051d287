"""TFRecord format: round trip, interop with the `tfrecord` package, corruption, atomicity."""
import multiprocessing
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from tfrecord import example_pb2 as tfr_example_pb2
from tfrecord.reader import example_loader, tfrecord_loader
from tfrecord.tools.tfrecord2idx import create_index
from tfrecord.writer import TFRecordWriter

from synthclip_jax.data import shard_files as sf
from synthclip_jax.data import tfrecord as tfr


def _example(i, **kw):
    args = dict(image=bytes([i % 256]) * (10 + i), captions=[f"caption {i}"], key=f"k{i}")
    args.update(kw)
    return tfr.encode_example(**args)


def _write(path, n, start=0):
    with sf.ShardWriter(str(path)) as w:
        for i in range(start, start + n):
            w.write(_example(i))
    return str(path)


def test_shard_name():
    assert sf.shard_name("d/train", 3, 8) == "d/train-00003-of-00008.tfrecord"
    with pytest.raises(ValueError):
        sf.shard_name("x", 8, 8)


def test_round_trip_many_shards(tmp_path):
    for s in range(3):
        _write(tmp_path / sf.shard_name("t", s, 3), n=4 + s, start=100 * s)
    ds = sf.TFRecordShards(str(tmp_path / "*.tfrecord"))
    assert len(ds) == 4 + 5 + 6
    keys = [tfr.decode_example(ds[i])["key"] for i in range(len(ds))]
    assert keys == [f"k{i}" for s in range(3) for i in range(100 * s, 100 * s + 4 + s)]
    assert ds.location(4) == (str(tmp_path / sf.shard_name("t", 1, 3)), 0)
    last = sf.TFRecordShards(ds.paths[2])
    assert [tfr.decode_example(last[i])["key"] for i in range(len(last))] == keys[9:]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_multiple_captions_concepts_source():
    ex = tfr.decode_example(tfr.encode_example(
        image=b"\xff\xd8jpeg", captions=["a cat", "ein Kätzchen ✓"], key="id/7",
        concepts=[3, 2**40, -1], source="import_pairs:tsv"))
    assert ex == {"image": b"\xff\xd8jpeg", "captions": ["a cat", "ein Kätzchen ✓"],
                  "key": "id/7", "concepts": [3, 2**40, -1], "source": "import_pairs:tsv",
                  "web_caption": "", "label": None}
    plain = tfr.decode_example(tfr.encode_example(image=b"x", captions=["c"], key="k"))
    assert plain["concepts"] == [] and plain["source"] == ""


def test_web_caption_is_optional_and_absent_when_empty():
    with_web = tfr.encode_example(image=b"x", captions=["a long caption"], key="k",
                                  web_caption="a red circle ✓")
    assert tfr.decode_example(with_web)["web_caption"] == "a red circle ✓"
    # Empty: no feature at all, so records without a web caption keep their old bytes.
    plain = tfr.encode_example(image=b"x", captions=["c"], key="k")
    assert tfr.encode_example(image=b"x", captions=["c"], key="k", web_caption="") == plain
    assert b"web_caption" not in plain
    two = _raw_example(image=[b"x"], caption=[b"c"], web_caption=[b"a", b"b"])
    with pytest.raises(sf.CorruptRecordError, match="web_caption"):
        tfr.decode_example(two)


def test_encode_is_deterministic_and_validates():
    assert _example(5, concepts=[1, 2], source="s") == _example(5, concepts=[1, 2], source="s")
    for bad in ("a string", [], ["ok", ""], [" "]):
        with pytest.raises(ValueError):
            tfr.encode_example(image=b"x", captions=bad, key="k")


def _raw_example(**features):
    ex = tfr_example_pb2.Example()
    for name, values in features.items():
        ex.features.feature[name].bytes_list.value.extend(values)
    return ex.SerializeToString()


@pytest.mark.parametrize("features,match", [
    (dict(caption=[b"c"], key=[b"k"]), "image"),
    (dict(image=[b"x"], key=[b"k"]), "caption"),
    (dict(image=[b"x"], caption=[b""], key=[b"k"]), "empty caption"),
    (dict(image=[b"x"], caption=[b"ok", b"\xff\xfe bad"], key=[b"k"]), "UTF-8"),
])
def test_decode_rejects_bad_examples(features, match):
    with pytest.raises(sf.CorruptRecordError, match=match) as e:
        tfr.decode_example(_raw_example(**features), where="f.tfrecord@123")
    assert "f.tfrecord@123" in str(e.value)
    with pytest.raises(sf.CorruptRecordError, match="not a tf.train.Example"):
        tfr.decode_example(b"\xff\xff\xff", where="w")


def test_example_schema_matches_tensorflow():
    """Our privately built tf.train.Example equals the generated one (tfrecord's copy of TF's
    example.proto) field for field, and stays out of protobuf's default pool."""
    from google.protobuf import descriptor_pb2
    for name in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example"):
        ours, theirs = descriptor_pb2.DescriptorProto(), descriptor_pb2.DescriptorProto()
        tfr.Example.DESCRIPTOR.file.message_types_by_name[name].CopyToProto(ours)
        getattr(tfr_example_pb2, name).DESCRIPTOR.CopyToProto(theirs)
        for d in (ours, theirs):
            for field in d.field:
                field.ClearField("options")  # [packed=true] is proto3's default anyway
        assert ours == theirs, name
    code = ("import synthclip_jax.data.tfrecord\n"
            "from google.protobuf import descriptor_pool\n"
            "try:\n    descriptor_pool.Default().FindMessageTypeByName('tensorflow.Example')\n"
            "except KeyError:\n    print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "clean", out.stderr


def test_our_file_read_by_tfrecord_package(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    with sf.ShardWriter(path) as w:
        for i in range(4):
            w.write(_example(i))
        w.write(_example(4, concepts=[7, -2**40], source="src"))
    rows = sf.read_index(path)
    records = list(tfrecord_loader(path, path + ".index", shard=(0, 1)))
    assert len(records) == len(rows) == 5
    examples = list(example_loader(path, path + ".index", shard=(0, 1)))
    assert [e["key"].decode() for e in examples] == [f"k{i}" for i in range(5)]
    assert examples[2]["caption"] == b"caption 2" and examples[2]["image"] == bytes([2]) * 12
    assert examples[4]["concept"].tolist() == [7, -2**40] and examples[4]["source"] == b"src"
    # The package's own indexer agrees byte for byte with ours.
    create_index(path, str(tmp_path / "theirs.index"))
    theirs, ours = tmp_path / "theirs.index", tmp_path / "a.tfrecord.index"
    assert theirs.read_bytes() == ours.read_bytes()


def test_tfrecord_package_file_read_by_us(tmp_path):
    path = str(tmp_path / "theirs.tfrecord")
    writer = TFRecordWriter(path)
    for i in range(4):
        writer.write({"image": (bytes([i]) * 7, "byte"), "caption": ([b"one", b"two"], "byte"),
                      "key": (f"x{i}".encode(), "byte"), "concept": ([i, 9], "int")})
    writer.close()
    with pytest.raises(FileNotFoundError, match="rebuild"):
        sf.TFRecordShards(path)
    assert sf.build_index(path) == 4
    ds = sf.TFRecordShards([path])
    ex = tfr.decode_example(ds[3])
    assert ex["key"] == "x3" and ex["captions"] == ["one", "two"] and ex["concepts"] == [3, 9]


@pytest.mark.parametrize("where", ["payload", "length"])
def test_crc_corruption_names_file_and_offset(tmp_path, where):
    path = _write(tmp_path / "c.tfrecord", n=3)
    offset, _ = sf.read_index(path)[1]
    with open(path, "r+b") as f:  # flip one bit of the payload or of the length field
        f.seek(offset + (14 if where == "payload" else 1))
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))
    ds = sf.TFRecordShards(path)
    tfr.decode_example(ds[0])
    with pytest.raises(sf.CorruptRecordError, match=f"{where} CRC") as e:
        ds[1]
    assert path in str(e.value) and f"offset {offset}" in str(e.value)
    with pytest.raises(sf.CorruptRecordError, match=f"offset {offset}"):
        sf.build_index(path)  # a sequential scan checks every CRC too


def test_truncated_shard_and_stale_index(tmp_path):
    path = _write(tmp_path / "t.tfrecord", n=3)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 5)
    with pytest.raises(ValueError, match="truncated shard"):
        sf.TFRecordShards(path)
    with pytest.raises(sf.CorruptRecordError, match="truncated record"):
        sf.build_index(path)
    path2 = _write(tmp_path / "s.tfrecord", n=2)
    with open(path2, "ab") as f:
        f.write(sf._frame(_example(9)))
    with pytest.raises(ValueError, match="stale index"):
        sf.read_index(path2)
    assert sf.build_index(path2) == 3 and len(sf.TFRecordShards(path2)) == 3


def test_missing_index_and_no_match(tmp_path):
    path = _write(tmp_path / "m.tfrecord", n=1)
    os.remove(path + ".index")
    with pytest.raises(FileNotFoundError) as e:
        sf.read_index(path)
    assert path + ".index" in str(e.value)
    assert "python -m synthclip_jax.data.shard_files" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        sf.TFRecordShards(str(tmp_path / "nothing-here*.tfrecord"))


def test_writer_is_atomic(tmp_path):
    path = str(tmp_path / "w.tfrecord")
    with pytest.raises(RuntimeError):
        with sf.ShardWriter(path) as w:
            w.write(_example(0))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with sf.ShardWriter(path) as w:
        w.write(_example(0))
        assert not os.path.exists(path) and w.num_records == 1
    assert sorted(os.listdir(tmp_path)) == ["w.tfrecord", "w.tfrecord.index"]
    # a killed writer's temporaries of the same output are removed by the next writer of it
    stale = [tmp_path / ".s.tfrecord.tmp-99999", tmp_path / ".s.tfrecord.index.tmp-99999"]
    for f in stale:
        f.write_bytes(b"half")
    _write(tmp_path / "s.tfrecord", n=1)
    assert not any(f.exists() for f in stale)
    empty = _write(tmp_path / "e.tfrecord", n=0)
    assert sf.read_index(empty).shape == (0, 2) and len(sf.TFRecordShards(empty)) == 0


def _read_all_in_child(ds):
    return [tfr.decode_example(ds[i])["key"] for i in range(len(ds))]


def test_pickle_and_spawned_process(tmp_path):
    for s in range(2):
        _write(tmp_path / sf.shard_name("p", s, 2), n=3, start=10 * s)
    ds = sf.TFRecordShards(str(tmp_path / "*.tfrecord"))
    ds[0]  # opens a file in this process; the pickle must not carry it
    state = pickle.dumps(ds)
    assert len(state) < 2000 and len(pickle.loads(state)) == 6
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        keys = pool.apply(_read_all_in_child, (ds,))
    assert keys == ["k0", "k1", "k2", "k10", "k11", "k12"]


def test_many_shards_bounded_open_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "_MAX_OPEN_FILES", 2)
    for s in range(5):
        _write(tmp_path / sf.shard_name("o", s, 5), n=1, start=s)
    ds = sf.TFRecordShards(str(tmp_path / "*.tfrecord"))
    assert [tfr.decode_example(ds[i])["key"] for i in (4, 0, 3, 1, 2, 4)] == \
        ["k4", "k0", "k3", "k1", "k2", "k4"]
    assert len(ds._local.files) == 2
    assert np.array_equal(sf.read_index(ds.paths[0])[0], [0, os.path.getsize(ds.paths[0])])


def test_glob_shards_matches_stdlib_glob(tmp_path, monkeypatch):
    """Our epath-based glob (which also serves gs://) against glob.glob on local files."""
    import glob
    for d in ("a", "b", "c/d"):
        (tmp_path / d).mkdir(parents=True)
        for s in range(2):
            _write(tmp_path / d / sf.shard_name("g", s, 2), n=1, start=s)
    (tmp_path / "a" / ".g-00000-of-00002.tfrecord.tmp-1").write_bytes(b"half")
    monkeypatch.chdir(tmp_path)
    for pattern in ("*/*.tfrecord", "*/g-0000[1]-*.tfrecord", "a/*", "c/*/*.tfrecord",
                    "a/g-00000-of-00002.tfrecord", "a/none-*", str(tmp_path / "*" / "*.tfrecord"),
                    str(tmp_path / "a" / "g-00001-of-00002.tfrecord")):
        assert sf.glob_shards(pattern) == sorted(glob.glob(pattern)), pattern
    ds = sf.TFRecordShards(str(tmp_path / "*" / "g-*.tfrecord"))
    assert len(ds) == 4 and tfr.decode_example(ds[3])["key"] == "k1"
