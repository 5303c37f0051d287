"""Image transforms shared by training (RandomResizedCrop) and evaluation (center crop):
encoded image -> crop box -> bicubic resize -> normalised float32 array. NumPy and PIL only.
"""
import io

import numpy as np
from PIL import Image


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
    """Encoded image -> uint8 (size, size, 3): `crop(width, height)` gives the box (in the
    stored image's pixels), resized (bicubic) to size x size. Training sends these pixels to
    the device, which normalises them (image_normalize.py).

    `draft` (data.jpeg_draft): a JPEG whose crop box is at least twice `size` on both sides is
    decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (DCT scaling, PIL `Image.draft`: the
    largest scale that keeps the box at least `size` wide and high), then cropped and resized
    as usual; several times fewer pixels decoded for low-resolution training. The pixels
    differ slightly from a full decode (tests/test_jpeg_draft.py states by how much)."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        width, height = img.size
        box = crop(width, height)
        box_w, box_h = box[2] - box[0], box[3] - box[1]
        if draft and img.format == "JPEG" and min(box_w, box_h) >= 2 * size:
            img.draft("RGB", (-(-width * size // box_w), -(-height * size // box_h)))
            fx, fy = img.size[0] / width, img.size[1] / height
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        img = img.convert("RGB")
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(img, np.uint8)


def decode_crop_normalize(image_bytes: bytes, crop, size: int, mean, std) -> np.ndarray:
    """`decode_crop`, then (x/255 - mean) / std as float32. Evaluation uses `center_crop_box`,
    which equals OpenCLIP's Resize(size) + CenterCrop(size) up to rounding."""
    pixels = decode_crop(image_bytes, crop, size)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
