"""data_gen.import_pairs: the four input layouts, determinism, bad inputs, idempotence."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_gen import import_pairs
from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.tfrecord import decode_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"a": (64, 48), "b": (600, 300), "c": (30, 90), "d": (256, 256)}


def _image_bytes(name, fmt="JPEG"):
    rng = np.random.default_rng(sum(map(ord, name)))
    w, h = SIZES[name]
    mode = "RGBA" if fmt == "PNG" else "RGB"
    im = Image.new(mode, (w, h), tuple(int(v) for v in rng.integers(0, 256, len(mode))))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _ext(name):
    return "png" if name == "c" else "jpg"  # one PNG (with alpha) among the JPEGs


def _write_images(folder):
    os.makedirs(folder, exist_ok=True)
    for name in SIZES:
        with open(os.path.join(folder, f"{name}.{_ext(name)}"), "wb") as f:
            f.write(_image_bytes(name, "PNG" if _ext(name) == "png" else "JPEG"))


def _expected_size(name):
    w, h = SIZES[name]
    s = min(1.0, 256 / max(w, h))
    return round(w * s), round(h * s)


def _run(*argv, expect=0):
    assert import_pairs.main([str(a) for a in argv]) == expect


def _read_back(out):
    ds = TFRecordShards(os.path.join(out, "*.tfrecord"))
    examples = [decode_example(ds[i], where=str(ds.location(i))) for i in range(len(ds))]
    for ex in examples:
        with Image.open(io.BytesIO(ex["image"])) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            ex["size"] = im.size
    return sorted(examples, key=lambda e: e["key"])


def make_csv(tmp_path):
    _write_images(tmp_path / "images")
    rows = ["image_path,caption"] + [f"images/{n}.{_ext(n)},\"a photo of {n}, nice\""
                                     for n in SIZES]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def make_tsv(tmp_path):
    _write_images(tmp_path / "imgs")
    lines = ["id\timage\tcaption1\tcaption2\tcaption3"]
    lines += [f"id-{n}\t{n}.{_ext(n)}\tfirst {n}\tsecond {n}\t" for n in SIZES]  # padded cell
    (tmp_path / "coco.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "coco.tsv"


def make_folder(tmp_path):
    _write_images(tmp_path / "folder")
    for n in SIZES:
        (tmp_path / "folder" / f"{n}.txt").write_text(f"first {n}\n\nsecond {n}\n")
    return tmp_path / "folder"


def make_tar(tmp_path):
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tar:
        for n in SIZES:
            for name, data in ((f"s/{n}.{_ext(n)}", _image_bytes(n, "PNG" if _ext(n) == "png"
                                                                     else "JPEG")),
                               (f"s/{n}.txt", f"first {n}\nsecond {n}".encode()),
                               (f"s/{n}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


LAYOUTS = {  # maker, image root flag, key of item n, captions of item n
    "csv": (make_csv, lambda n: f"images/{n}.{_ext(n)}", lambda n: [f"a photo of {n}, nice"]),
    "tsv": (make_tsv, lambda n: f"id-{n}", lambda n: [f"first {n}", f"second {n}"]),
    "folder": (make_folder, lambda n: n, lambda n: [f"first {n}", f"second {n}"]),
    "tar": (make_tar, lambda n: f"s/{n}", lambda n: [f"first {n}", f"second {n}"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_import_layouts(tmp_path, layout):
    make, key, captions = LAYOUTS[layout]
    src = make(tmp_path)
    extra = ["--image-root", tmp_path / "imgs"] if layout == "tsv" else []
    _run("--input", src, "--out", tmp_path / "out", "--num-shards", 3, "--prefix", "p", *extra)
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["manifest.json"] + [f"p-{i:05d}-of-00003.tfrecord{s}"
                                         for i in range(3) for s in ("", ".index")] + [
                                             "tfrecord_index.npz"]
    examples = _read_back(tmp_path / "out")
    by_key = {e["key"]: e for e in examples}
    assert sorted(by_key) == sorted(key(n) for n in SIZES)
    for n in SIZES:
        ex = by_key[key(n)]
        assert ex["captions"] == captions(n) and ex["source"] == f"import_pairs:{layout}"
        assert ex["size"] == _expected_size(n)
    assert by_key[key("b")]["size"] == (256, 128)  # downscaled 600x300
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 4, "written": 4, "skipped": 0}
    assert [s["records"] for s in manifest["shards"]] == [2, 1, 1]  # round-robin
    assert manifest["kind"] == layout and manifest["settings"]["max_side"] == 256


def test_deterministic_and_idempotent(tmp_path, capsys):
    src = make_folder(tmp_path)
    for out in ("o1", "o2"):
        _run("--input", src, "--out", tmp_path / out, "--num-shards", 2)
    for name in os.listdir(tmp_path / "o1"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
    _run("--input", src, "--out", tmp_path / "o3", "--num-shards", 2, "--workers", 2)
    for name in os.listdir(tmp_path / "o1"):
        if name != "manifest.json":
            assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o3" / name).read_bytes()
    capsys.readouterr()
    _run("--input", src, "--out", tmp_path / "o1", "--num-shards", 2)
    assert "already complete" in capsys.readouterr().out
    _run("--input", src, "--out", tmp_path / "o1", "--num-shards", 3, expect=1)
    assert "settings.num_shards: 2 -> 3" in capsys.readouterr().err
    os.remove(tmp_path / "o1" / "manifest.json")  # as if the earlier run had died
    _run("--input", src, "--out", tmp_path / "o1", "--num-shards", 3, expect=1)
    assert "holds other shards" in capsys.readouterr().err


def test_progress_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(import_pairs, "PROGRESS_SECONDS", 0)  # not a terminal: a line each time
    _run("--input", make_csv(tmp_path), "--out", tmp_path / "o", "--num-shards", 1)
    err = capsys.readouterr().err
    assert "import_pairs: 2 pairs (" in err and "(2 written, 0 skipped)" in err
    assert "import_pairs: 4 pairs (" in err and " ETA 0:00:00" in err


def _bad_csv(tmp_path, bad_row):
    make_csv(tmp_path)
    with open(tmp_path / "pairs.csv", "ab") as f:
        f.write(bad_row)
    return tmp_path / "pairs.csv"


BAD_ROWS = {
    "missing image file": b"images/nope.jpg,a caption\n",
    "cannot decode image": b"broken.jpg,a caption\n",
    "empty caption": b"images/a.jpg,  \n",
    "caption is not valid UTF-8": b"images/a.jpg,caf\xe9 latin-1\n",
    "malformed row": b"images/a.jpg,one,two\n",
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_csv_row(tmp_path, capsys, reason):
    src = _bad_csv(tmp_path, BAD_ROWS[reason])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    _run("--input", src, "--out", out, "--num-shards", 2, expect=1)
    err = capsys.readouterr().err
    assert f"{src} line 6" in err and reason in err and "--skip-bad" in err
    assert not any(f.endswith(".tfrecord") or f == "manifest.json" for f in os.listdir(out))
    # Skipped and counted, within the allowed fraction (1 of 5).
    _run("--input", src, "--out", out, "--num-shards", 2, "--skip-bad",
         "--max-bad-fraction", 0.2)
    assert f"skipped 1 of 5 items ({reason}: 1)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 5, "written": 4, "skipped": 1}
    assert manifest["skipped"][0]["where"] == f"{src} line 6"
    assert manifest["skipped"][0]["reason"].startswith(reason)
    assert len(_read_back(out)) == 4


def test_too_many_bad_fails_loudly(tmp_path, capsys):
    src = _bad_csv(tmp_path, BAD_ROWS["missing image file"])
    out = tmp_path / "out"
    _run("--input", src, "--out", out, "--num-shards", 2, "--skip-bad", expect=1)
    err = capsys.readouterr().err
    assert "1 of 5 items are bad" in err and "--max-bad-fraction=0.01" in err
    assert os.listdir(out) == []


def test_bad_headers_and_inputs(tmp_path, capsys):
    (tmp_path / "nohead.csv").write_text("images/a.jpg,a caption\n")
    (tmp_path / "nohead.tsv").write_text("x\ta.jpg\tcap\n")
    for name in ("nohead.csv", "nohead.tsv"):
        _run("--input", tmp_path / name, "--out", tmp_path / "o", "--num-shards", 1,
             "--skip-bad", expect=1)
        assert f"{tmp_path / name} line 1: expected" in capsys.readouterr().err
    _run("--input", tmp_path / "x.parquet", "--out", tmp_path / "o", "--num-shards", 1, expect=1)
    assert "cannot tell the layout" in capsys.readouterr().err
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    _run("--input", tmp_path / "bad.tar", "--out", tmp_path / "o", "--num-shards", 1, expect=1)
    assert f"{tmp_path / 'bad.tar'}: cannot read tar" in capsys.readouterr().err


def test_bad_tsv_folder_and_tar_items(tmp_path, capsys):
    src = make_tsv(tmp_path)
    with open(src, "a") as f:
        f.write("id-x\ta.jpg\t\t\n")
    _run("--input", src, "--out", tmp_path / "o1", "--num-shards", 1, "--image-root",
         tmp_path / "imgs", expect=1)
    assert f"{src} line 6: empty caption" in capsys.readouterr().err

    folder = make_folder(tmp_path)
    (folder / "e.jpg").write_bytes(_image_bytes("a"))  # no e.txt
    _run("--input", folder, "--out", tmp_path / "o2", "--num-shards", 1, expect=1)
    assert f"{folder / 'e.jpg'}: missing caption file: e.txt" in capsys.readouterr().err

    tar_path = make_tar(tmp_path)
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo("s/z.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"only"))
    _run("--input", tmp_path / "*.tar", "--out", tmp_path / "o3", "--num-shards", 1,
         "--skip-bad", "--max-bad-fraction", 0.5)
    assert "skipped 1 of 5 items (no image member (jpg/jpeg/png/webp): 1)" in \
        capsys.readouterr().out
    manifest = json.loads((tmp_path / "o3" / "manifest.json").read_text())
    assert manifest["skipped"][0]["where"] == f"{tar_path} member s/z.txt"


def test_help_via_subprocess():
    result = subprocess.run([sys.executable, "-m", "data_gen.import_pairs", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--input" in result.stdout and "--num-shards" in result.stdout
    assert "image_path,caption" in result.stdout
