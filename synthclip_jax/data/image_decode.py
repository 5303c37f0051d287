"""The one rule that turns a stored image into RGB pixels, for every stage: the importers
(data_gen.import_pairs re-encodes with it), data_gen.write's contact sheet, the training
pipeline and evaluation (data/transforms.py). One rule, so the same file gives the same pixels
whichever stage read it:

- EXIF orientation is applied (phones store photos rotated, with a flag saying so);
- 16-bit (and 32-bit integer) grayscale is scaled to 8 bits (x / 257), not clipped: Pillow's
  own convert("RGB") clips 0..65535 to 255, storing a mid-grey photo almost all white;
- transparency is composited on white (a transparent background would otherwise be whatever
  colour the file keeps under it, often black);
- the result is 8-bit RGB.
"""
import io

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored)."""
    return image.getexif().get(EXIF_ORIENTATION, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened PIL image -> 8-bit RGB by the rule above."""
    if orientation(image) != 1:  # exif_transpose copies even when there is nothing to do
        image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_GRAY:
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"),
                                      image.convert("RGBA"))
    return image.convert("RGB")


def decode_rgb(data: bytes, draft_size=None) -> Image.Image:
    """Encoded image bytes -> 8-bit RGB PIL image. `draft_size` (w, h): a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale (DCT scaling), never below that size."""
    with Image.open(io.BytesIO(data)) as image:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", draft_size)
        rgb = to_rgb(image)
        rgb.load()
        return rgb
