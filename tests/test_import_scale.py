"""data_gen.import_pairs at SynthCI-30M scale: the released layout (tab-separated CSV, images in
zip archives), independent workers, kill and rerun, gs:// output, JPEG pass-through."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from data_gen import import_pairs, pair_records
from data_gen.progress import Progress
from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.tfrecord import Example, decode_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(seed, size, fmt="JPEG"):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def make_synthci(tmp_path, n=24, web_caption=False):
    """SynthCI-30/combined_images_and_captions.csv (tab-separated) + data/*.zip, as released:
    the CSV's image_path is relative to data/ and each image is a member of one archive."""
    data = tmp_path / "SynthCI-30" / "data"
    data.mkdir(parents=True)
    rows, images = [], {}
    for i in range(n):
        path = f"{i // 8:03d}/img_{i:05d}.{'png' if i % 5 == 3 else 'jpg'}"
        size = (300, 200) if i % 4 == 1 else (64, 48)  # some above --max-side 256
        images[path] = _image(i, size, "PNG" if path.endswith("png") else "JPEG")
        caption = f'a "quoted" photo, number {i}' if i % 3 == 0 else f"photo {i}\twith tab"
        rows.append([path, caption] + ([f"web text {i}"] if web_caption else []))
    for a in range(3):  # 3 archives, one stored, the others deflated
        method = zipfile.ZIP_STORED if a == 0 else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(data / f"part_{a}.zip", "w", method) as z:
            for path, blob in images.items():
                if int(path[:3]) % 3 == a:
                    z.writestr(path, blob)
    csv_path = tmp_path / "SynthCI-30" / "combined_images_and_captions.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["image_path", "caption"] + (["web_caption"] if web_caption else []))
        w.writerows(rows)
    return csv_path, data, rows, images


def _imp(csv_path, data, out, *extra, expect=0):
    argv = ["--input", csv_path, "--image-root", data, "--out", out, "--quiet", *extra]
    assert import_pairs.main([str(a) for a in argv]) == expect


def _records(pattern):
    ds = TFRecordShards(str(pattern))
    return [ds[i] for i in range(len(ds))]


def test_synthci_layout_records_equal_csv_rows(tmp_path):
    csv_path, data, rows, images = make_synthci(tmp_path, web_caption=True)
    _imp(csv_path, data, tmp_path / "out", "--num-shards", 4)
    got = {}
    for payload in _records(tmp_path / "out" / "*.tfrecord"):
        ex = decode_example(payload)
        web = Example.FromString(payload).features.feature["web_caption"].bytes_list.value
        got[ex["key"]] = (ex["captions"], [w.decode() for w in web], ex["image"])
    assert sorted(got) == sorted(r[0] for r in rows)
    for path, caption, web in rows:
        captions, webs, jpeg = got[path]
        assert captions == [caption.strip()] and webs == [web]
        with Image.open(io.BytesIO(jpeg)) as im:
            assert im.format == "JPEG" and max(im.size) <= 256
        if path.endswith("jpg") and int(path[-9:-4]) % 4 != 1:  # a JPEG of 64 x 48
            assert jpeg == images[path]  # passed through, not re-encoded
        else:
            assert jpeg != images[path]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 24, "written": 24, "skipped": 0}


def test_comma_csv_sep_flag_and_missing_member(tmp_path):
    csv_path, data, rows, _ = make_synthci(tmp_path, n=8)
    comma = tmp_path / "pairs.txt.csv"
    with open(comma, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerows([["image_path", "caption"]] + rows + [["000/nope.jpg", "gone"]])
    _imp(comma, data, tmp_path / "o1", "--num-shards", 1, expect=1)  # ';' is not detected
    _imp(comma, data, tmp_path / "o1", "--num-shards", 1, "--sep", ";", "--skip-bad",
         "--max-bad-fraction", 0.5)
    manifest = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 9, "written": 8, "skipped": 1}
    assert manifest["skipped"][0]["reason"].startswith("missing image file")


def _shard_bytes(out):
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out))
            if n.endswith((".tfrecord", ".index"))}


def test_three_workers_equal_one_worker(tmp_path):
    csv_path, data, _, _ = make_synthci(tmp_path)
    _imp(csv_path, data, tmp_path / "one", "--num-shards", 5, "--workers", 2)
    for i in range(3):
        assert not (tmp_path / "three" / "manifest.json").exists()
        _imp(csv_path, data, tmp_path / "three", "--num-shards", 5, "--worker-index", i,
             "--num-workers", 3)
        written = [n for n in os.listdir(tmp_path / "three") if n.endswith(".tfrecord")]
        assert {int(n.split("-")[1]) % 3 for n in written} == set(range(i + 1))
    one, three = _shard_bytes(tmp_path / "one"), _shard_bytes(tmp_path / "three")
    assert len(one) == 10 and one == three
    assert (tmp_path / "one" / "manifest.json").read_bytes() == \
        (tmp_path / "three" / "manifest.json").read_bytes()


def _spawn(csv_path, data, out, *extra):
    argv = [sys.executable, "-m", "data_gen.import_pairs", "--input", csv_path, "--image-root",
            data, "--out", out, "--quiet", *extra]
    return subprocess.Popen([str(a) for a in argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_killed_worker_reruns_without_duplicates_or_temp_files(tmp_path):
    csv_path, data, rows, _ = make_synthci(tmp_path, n=400)
    out = tmp_path / "out"
    flags = ["--num-shards", 4, "--num-workers", 2]
    _imp(csv_path, data, out, *flags, "--worker-index", 0)
    proc = _spawn(csv_path, data, out, *flags, "--worker-index", 1)
    deadline = time.time() + 60
    while not any(".tmp-" in n for n in os.listdir(out)) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    names = os.listdir(out)
    assert any(".tmp-" in n for n in names) and "manifest.json" not in names
    assert not any(n.startswith("pairs-00001") or n.startswith("pairs-00003") for n in names)
    _imp(csv_path, data, out, *flags, "--worker-index", 1)  # the rerun
    names = os.listdir(out)
    assert not any(".tmp-" in n for n in names) and "manifest.json" in names
    keys = [decode_example(r)["key"] for r in _records(out / "*.tfrecord")]
    assert sorted(keys) == sorted(r[0] for r in rows)  # each row once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 400, "written": 400, "skipped": 0}
    assert sum(s["records"] for s in manifest["shards"]) == 400


@pytest.fixture
def memory_gcs(monkeypatch):
    """gs:// served by fsspec's in-memory file system (objects appear when a write closes,
    as on GCS), reached through etils.epath exactly as the real bucket would be."""
    import fsspec.registry
    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem

    class MemoryGCS(MemoryFileSystem):
        protocol, root_marker = ("gs", "gcs"), ""
        store, pseudo_dirs = {}, [""]

        @classmethod
        def _strip_protocol(cls, path):  # "bucket/key", as gcsfs has it
            path = os.fspath(path)
            return path.removeprefix("gs://").removeprefix("gcs://").strip("/")

    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.setitem(registry, "gs", MemoryGCS)
    monkeypatch.setitem(registry, "gcs", MemoryGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield MemoryGCS()
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_gcs_output_written_once_manifest_last(tmp_path, memory_gcs):
    import hashlib
    csv_path, data, _, _ = make_synthci(tmp_path)
    _imp(csv_path, data, tmp_path / "local", "--num-shards", 3)
    for i in range(2):
        _imp(csv_path, data, "gs://bucket/synthci", "--num-shards", 3, "--worker-index", i,
             "--num-workers", 2)
    names = sorted(p.rsplit("/", 1)[1] for p in memory_gcs.store)
    assert not any(".tmp-" in n for n in names)
    manifest = json.loads(memory_gcs.cat("gs://bucket/synthci/manifest.json"))
    for shard in manifest["shards"]:
        blob = memory_gcs.cat(f"gs://bucket/synthci/{shard['file']}")
        assert hashlib.sha256(blob).hexdigest() == shard["sha256"]
        assert blob == (tmp_path / "local" / shard["file"]).read_bytes()
    assert _records("gs://bucket/synthci/*.tfrecord") == _records(tmp_path / "local" / "*.tfrecord")
    assert manifest == json.loads((tmp_path / "local" / "manifest.json").read_text())


def test_truncated_jpeg_is_not_passed_through(tmp_path):
    good = _image(0, (64, 48))
    assert pair_records.can_pass_through(good, 256)
    assert not pair_records.can_pass_through(good[:-200], 256)  # cut short: no EOI marker
    assert not pair_records.can_pass_through(good, 32)  # too large: resized
    assert not pair_records.can_pass_through(_image(0, (64, 48), "PNG"), 256)


def test_progress_live_line_and_quiet(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    live, logged = Tty(), Tty()
    for stream, quiet in ((live, False), (logged, True)):
        bar = Progress("stage", total=4, unit="pairs", quiet=quiet, every_seconds=0, stream=stream)
        for _ in range(4):
            bar.update()
        bar.close()
    assert live.getvalue().startswith("\rstage: ") and "4/4 pairs" in live.getvalue()
    assert logged.getvalue().count("\n") >= 4 and "\r" not in logged.getvalue()


def test_zip_digest_collisions_still_find_the_right_member(tmp_path, monkeypatch):
    """Every name given the same digest: find() returns all members as candidates, and the
    reader confirms the name in each local header, so every record still gets its image."""
    from data_gen import zip_members
    monkeypatch.setattr(zip_members, "name_digest", lambda name: 7)
    csv_path, data, rows, images = make_synthci(tmp_path, n=10)
    _imp(csv_path, data, tmp_path / "out", "--num-shards", 2)
    for payload in _records(tmp_path / "out" / "*.tfrecord"):
        ex = decode_example(payload)
        original = images[ex["key"]]
        if ex["key"].endswith("jpg") and int(ex["key"][-9:-4]) % 4 != 1:
            assert ex["image"] == original  # passed through: the very bytes of that member
        else:
            with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(ex["image"])) as b:
                w, h = a.size  # sizes differ between members (300 x 200 and 64 x 48)
                scale = min(1, 256 / max(w, h))
                assert b.size == (round(w * scale), round(h * scale))
