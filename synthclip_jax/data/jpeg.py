"""JPEG encoding, as every record's `image` is stored: the one encoder of the data writers (the
importers, the image stage, demo and benchmark data). Decoding is `transforms.py`'s."""
import io

import numpy as np
from PIL import Image


def encode_jpeg(image, quality: int) -> bytes:
    """A PIL image or an (H, W, 3) uint8 array -> JPEG bytes. Only pixels are written (no
    EXIF/ICC/timestamps), so the same pixels and quality give the same bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
