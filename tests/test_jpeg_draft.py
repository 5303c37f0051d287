"""DCT-scaled JPEG decode (data.jpeg_draft, data/transforms.py decode_crop): within a stated
tolerance of the full decode + the same crop and bicubic resize, and untouched when the crop
is less than twice the target size.

Tolerance (measured on a 256 px quality-95 JPEG of a smooth random scene with edges, the
kind of picture Stable Diffusion writes at 256 px), centre crop: mean absolute difference
0.7-1.2 grey levels of 255, 99th percentile 7-10, maximum 17-34 (on the sharp edges: the
decoder's 8x8 DCT reduction filters unlike PIL's bicubic reduction) at 112/84/64/32 px.
Bounds: mean under 1.5, 99th percentile under 12, for a centre and a random crop."""
import numpy as np
import pytest
from PIL import Image

from synthclip_jax.data.jpeg import encode_jpeg
from synthclip_jax.data.transforms import center_crop_box, decode_crop, random_resized_crop_box

MEAN_TOL, P99_TOL = 1.5, 12.0


def scene(size=256, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC),
                     np.float32)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(6):  # sharp-edged discs
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(10, 50)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)  # texture
    return encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=95)


@pytest.mark.parametrize("size", [112, 84, 64, 32])
@pytest.mark.parametrize("crop", ["center", "random"])
def test_draft_within_tolerance_of_full_decode(size, crop):
    data = scene()
    if crop == "center":
        box = center_crop_box
    else:  # the same box both times
        fixed = random_resized_crop_box(256, 256, (0.9, 1.0), (3 / 4, 4 / 3),
                                        np.random.default_rng(size))
        box = lambda w, h: fixed  # noqa: E731
    full = decode_crop(data, box, size).astype(np.float32)
    drafted = decode_crop(data, box, size, draft=True).astype(np.float32)
    diff = np.abs(full - drafted)
    assert not np.array_equal(full, drafted)  # the reduced decode really ran
    assert diff.mean() < MEAN_TOL, diff.mean()
    assert np.percentile(diff, 99) < P99_TOL, np.percentile(diff, 99)


def test_no_draft_when_the_crop_is_under_twice_the_size():
    data = scene()
    for size in (224, 160, 129):
        np.testing.assert_array_equal(decode_crop(data, center_crop_box, size, draft=True),
                                      decode_crop(data, center_crop_box, size))
