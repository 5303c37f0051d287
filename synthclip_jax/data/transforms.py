"""Image transforms shared by training (RandomResizedCrop) and evaluation (center crop):
encoded image -> crop box -> bicubic resize -> normalised float32 array. NumPy and PIL only.
"""

import numpy as np
from PIL import Image

from synthclip_jax.data.image_decode import decode_rgb


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


def decode_crop(image_bytes: bytes, crop, size: int) -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3): `crop(width, height)` gives the box, resized
    (bicubic) to size x size. Training sends these pixels to the device, which normalises them
    (image_normalize.py)."""
    img = decode_rgb(image_bytes)  # the one rule of every stage (EXIF, 16-bit, alpha)
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=crop(*img.size))
    return np.asarray(img, np.uint8)


def decode_crop_normalize(image_bytes: bytes, crop, size: int, mean, std) -> np.ndarray:
    """`decode_crop`, then (x/255 - mean) / std as float32. Evaluation uses `center_crop_box`,
    which equals OpenCLIP's Resize(size) + CenterCrop(size) up to rounding."""
    pixels = decode_crop(image_bytes, crop, size)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
