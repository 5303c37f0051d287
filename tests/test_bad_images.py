"""Images stored wrong (issue 29, class 4): one decode rule for every stage
(synthclip_jax/data/image_decode.py), checked against independent references (NumPy on the
source pixels, Pillow's own EXIF transpose), and table paths that leave --image-root refused.
The stages run in-process through their main()s (tests/test_bad_inputs.invoke)."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from synthclip_jax.data.shard_files import TFRecordShards
from synthclip_jax.data.tfrecord import decode_example
from synthclip_jax.data.transforms import center_crop_box, decode_crop
from tests.test_bad_inputs import invoke, make_tar


def stored_images(out) -> dict:
    """{key: stored image bytes} of the shards in `out`."""
    ds = TFRecordShards(os.path.join(out, "*.tfrecord"))
    return {e["key"]: e["image"] for e in (decode_example(ds[i]) for i in range(len(ds)))}


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.float32)


def import_csv(tmp_path, capsys, rows, *extra):
    src = tmp_path / "in" / "pairs.csv"
    src.write_text("image_path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return invoke("import_pairs", ["--input", src, "--out", tmp_path / "out", "--num-shards", 1,
                                   *extra], capsys)


def gradient16(h=48, w=64) -> np.ndarray:
    """A 16-bit grey ramp whose mean is mid-grey."""
    return (np.linspace(0, 65535, w)[None, :].repeat(h, 0)).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, capsys, fmt):
    """Stored 99.6% white before (Pillow clips I;16 to 255)."""
    (tmp_path / "in").mkdir()
    wide = gradient16()
    name = f"g.{fmt.lower()}"
    Image.fromarray(wide).save(tmp_path / "in" / name, fmt)
    code, text = import_csv(tmp_path, capsys, [(name, "a grey ramp")])
    assert code == 0, text
    got = pixels(stored_images(tmp_path / "out")[name])
    reference = wide.astype(np.float64) / 257  # 0..65535 -> 0..255
    assert abs(got.mean() - reference.mean()) < 1.5, (got.mean(), reference.mean())
    np.testing.assert_allclose(got[..., 0], reference, atol=4)  # JPEG at quality 95


def rotated_jpeg(orientation=6) -> tuple:
    """A JPEG stored sideways with an EXIF flag saying so, and the upright pixels (Pillow's
    exif_transpose: the reference)."""
    rng = np.random.default_rng(0)
    stored = Image.fromarray(np.kron(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8),
                                     np.ones((8, 8, 1), np.uint8)))  # 48 x 64 blocks
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
    return buf.getvalue(), upright


def test_exif_orientation_is_the_same_through_write_and_import_pairs(tmp_path, capsys):
    """data_gen.write stores JPEG bytes as they are, import_pairs re-encodes: the pipeline's
    decode gives the upright image from both (before, write's record trained sideways)."""
    data, upright = rotated_jpeg()
    assert upright.shape[:2] == (64, 48)  # stored 48 high, 64 wide: upright it is tall
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jpg").write_bytes(data)
    code, text = import_csv(tmp_path, capsys, [("r.jpg", "a tall picture")])
    assert code == 0, text
    imported = stored_images(tmp_path / "out")["r.jpg"]
    make_tar(tmp_path / "pairs" / "pairs-00000.tar",
             [("r.jpg", data), ("r.json", json.dumps({"key": "r", "caption": "tall"}).encode())])
    code, text = invoke("write", ["--pairs", f"{tmp_path}/pairs/*.tar", "--out",
                                  tmp_path / "written", "--num-shards", 1], capsys)
    assert code == 0, text
    written = stored_images(tmp_path / "written")["r"]
    for stored in (imported, written):
        full = decode_crop(stored, lambda w, h: (0, 0, w, h), 64)  # what training decodes
        box = decode_crop(stored, center_crop_box, 48).astype(np.float32)
        assert full.shape == (64, 64, 3)
        reference = np.asarray(Image.fromarray(upright.astype(np.uint8)).resize(
            (48, 48), Image.Resampling.BICUBIC, box=center_crop_box(48, 64)), np.float32)
        assert np.abs(box - reference).mean() < 6, np.abs(box - reference).mean()


@pytest.mark.parametrize("path_of", [lambda tmp: "/etc/hostname",
                                     lambda tmp: "../outside.jpg",
                                     lambda tmp: str(tmp / "outside.jpg")],
                         ids=["absolute system file", "dot-dot", "absolute image"])
def test_image_paths_that_leave_the_image_root_are_refused(tmp_path, capsys, path_of):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "outside.jpg")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "in" / "a.jpg")
    path = path_of(tmp_path)
    code, text = import_csv(tmp_path, capsys, [("a.jpg", "blue"), (path, "sneaky")])
    assert code == 1 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert "leaves the image root" in text and "--allow-outside-root" in text
    assert repr(path) in text and not (tmp_path / "out" / "manifest.json").exists()


def test_allow_outside_root_reads_the_file(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), (250, 0, 0)).save(tmp_path / "outside.png")
    code, text = import_csv(tmp_path, capsys, [(str(tmp_path / "outside.png"), "red")],
                            "--allow-outside-root")
    assert code == 0, text
    (stored,) = stored_images(tmp_path / "out").values()
    assert np.abs(pixels(stored) - [250, 0, 0]).max() < 8
