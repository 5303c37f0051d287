"""One input pair of data_gen.import_pairs -> its serialized `tf.train.Example`, or the reason
it is bad: the per-item work, run in the import's decoding processes (--workers). Which images
are stored as they are and which are re-encoded is stated in `import_pairs --help` (Images).
"""
import io
import math

from PIL import Image

from data_gen.pair_inputs import Item
from data_gen.zip_members import read_any
from synthclip_jax.data.image_decode import decode_rgb, orientation
from synthclip_jax.data.jpeg import encode_jpeg
from synthclip_jax.data.tfrecord import encode_example

def to_jpeg(data: bytes, max_side: int, quality: int) -> bytes:
    """The image decoded by the one rule of every stage (synthclip_jax/data/image_decode.py:
    EXIF orientation, 16-bit grey, transparency), at most `max_side`, as JPEG."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    draft = None
    if max(w, h) >= 2 * max_side:
        # a JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT scaling), never below the target size:
        # the LANCZOS resize below then has less to do, at a fraction of the decode cost
        s = max_side / max(w, h)
        draft = (math.ceil(w * s), math.ceil(h * s))
    im = decode_rgb(data, draft)
    w, h = im.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    return encode_jpeg(im, quality)


def can_pass_through(data: bytes, max_side: int) -> bool:
    """A JPEG that to_jpeg would only re-encode: stored as is. Reads the header only; the
    end-of-image marker catches a file cut short (a full decode would, at ~10x the cost)."""
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\0\r\n").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= max_side
                    and orientation(im) == 1)
    except Exception:  # unreadable header: to_jpeg reports it
        return False


def process(item: Item, *, source, max_side, quality):
    """Returns (where, key, serialized Example or None, reason); may run in a worker."""
    if item.bad:
        return item.where, item.key, None, item.bad
    captions = [c.strip() for c in item.captions]
    if not captions or not all(captions):
        return item.where, item.key, None, "empty caption"
    for c in captions + [item.web_caption]:
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            return item.where, item.key, None, f"caption is not valid UTF-8: {c[:60]!r}"
    data = item.image
    try:
        if isinstance(data, list):  # zip members (ZipRefs)
            data = read_any(data)
        elif isinstance(data, str):
            with open(data, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        return item.where, item.key, None, f"missing image file: {data}"
    except KeyError as e:
        return item.where, item.key, None, f"missing image file: {e} (not in the zip archives)"
    except (OSError, ValueError) as e:  # zlib.error is neither; below
        return item.where, item.key, None, f"cannot read image file: {e}"
    except Exception as e:  # a damaged deflate stream
        return item.where, item.key, None, f"cannot read image file: {type(e).__name__}: {e}"
    try:
        jpeg = data if can_pass_through(data, max_side) else to_jpeg(data, max_side, quality)
    except Exception as e:  # Pillow raises many types for broken files; all mean "bad image"
        return item.where, item.key, None, f"cannot decode image: {type(e).__name__}: {e}"
    example = encode_example(image=jpeg, captions=captions, key=item.key, source=source,
                             web_caption=item.web_caption)
    return item.where, item.key, example, ""
