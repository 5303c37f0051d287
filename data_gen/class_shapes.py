"""Class images for `data_gen.images --prompts classnames|templates FILE --backend shapes`: the
procedural renderer drawing the class a prompt names, so a supervised classifier
(`train.task='classify'`) can be trained and scaled on CPU without a diffusion model.

A class name is "COLOR SHAPE" in the demo vocabulary (`synthclip_jax.data.shapes`: e.g. "red
circle", "blue triangle"). Each image draws one object of that colour and shape at a random size,
position and background with pixel noise (the demo's `render`), from one integer seed
(`image_seed(seed, index)`), so reruns reproduce it and no two images are the same.
"""
import numpy as np
from PIL import Image

from synthclip_jax.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, render


def parse_class(name: str) -> tuple:
    words = name.split()
    if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
        raise SystemExit(f"class name {name!r}: the shapes backend draws 'COLOR SHAPE' classes, "
                         f"COLOR one of {sorted(COLORS)}, SHAPE one of {list(SHAPES)}")
    return words[0], words[1]


def render_class(name: str, seed: int, size: int) -> Image.Image:
    color, shape = parse_class(name)
    rng = np.random.default_rng(seed)
    obj_size = list(SIZES)[int(rng.integers(len(SIZES)))]
    position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Image.fromarray(render(obj_size, color, shape, position, background, size, rng))
