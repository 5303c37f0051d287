"""Image transforms shared by training (RandomResizedCrop) and evaluation (center crop):
encoded image -> crop box -> bicubic resize -> normalised float32 array. NumPy and PIL only.
"""

import io
import math

import numpy as np
from PIL import Image

from synthclip_jax.data.image_decode import orientation, to_rgb


def random_resized_crop_box(width, height, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop box: area fraction in `scale`, log-uniform aspect ratio
    in `ratio`, 10 tries, then the largest central crop within `ratio`."""
    area = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width, height):
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode_crop(image_bytes: bytes, crop, size: int, draft: bool = False) -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3): `crop(width, height)` (called once) gives the box
    in the shown image's pixels (EXIF orientation applied), resized (bicubic) to size x size.
    Decoded by the one rule of every stage (data/image_decode.py). Training sends these pixels
    to the device, which normalises them (image_normalize.py).

    `draft` (data.jpeg_draft): a JPEG whose crop box is at least twice `size` on both sides is
    decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (DCT scaling, PIL `Image.draft`: the
    largest scale that keeps the box at least `size` wide and high), then cropped and resized
    as usual; several times fewer pixels decoded for low-resolution training. The pixels
    differ slightly from a full decode (tests/test_jpeg_draft.py states by how much)."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        width, height = image.size
        if orientation(image) in (5, 6, 7, 8):  # stored a quarter turn off: shown w, h swapped
            width, height = height, width
        box = crop(width, height)
        scale = min(box[2] - box[0], box[3] - box[1]) / size
        if draft and image.format == "JPEG" and scale >= 2:
            # one scale for both axes, so the stored orientation does not matter
            image.draft("RGB", (math.ceil(image.size[0] / scale),
                                math.ceil(image.size[1] / scale)))
        img = to_rgb(image)
    fx, fy = img.size[0] / width, img.size[1] / height
    img = img.resize((size, size), Image.Resampling.BICUBIC,
                     box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy))
    return np.asarray(img, np.uint8)


def decode_crop_normalize(image_bytes: bytes, crop, size: int, mean, std) -> np.ndarray:
    """`decode_crop`, then (x/255 - mean) / std as float32. Evaluation uses `center_crop_box`,
    which equals OpenCLIP's Resize(size) + CenterCrop(size) up to rounding."""
    pixels = decode_crop(image_bytes, crop, size)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
