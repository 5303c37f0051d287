"""Shape scenes for `data_gen.images --shapes N`: shapes drawn with Pillow, captions that state
exactly what is drawn.

Extends the trainer's demo vocabulary (`synthclip_jax.data.shapes`: COLORS, SHAPES, SIZES,
POSITIONS, caption_of) with counts and named backgrounds. A scene is a pure function of one
integer seed (data_gen.images passes image_seed(seed, index)), so reruns reproduce it:
  - one object:  "a large red circle at the top left on a grey background" (the demo caption,
    with the background added; same sizes and positions as the demo);
  - several:     "two small red circles and a large blue square on a beige background": one or
    two groups (distinct colour+shape), 1-3 objects each, placed in distinct cells of a 3x3 grid,
    so objects never overlap and the counts in the caption are what a viewer can count.
Each scene also has a short web caption (`scene_captions`), CLIPS's second caption role: just
the colours and shapes, "a red circle" or "red circles and a blue square", no sizes, counts,
positions or background, as alt-text is short where the synthetic caption is detailed.
"""
import numpy as np
from PIL import Image, ImageDraw

from synthclip_jax.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, caption_of

BACKGROUNDS = {"grey": (128, 128, 128), "slate": (90, 110, 140), "beige": (200, 185, 150),
               "dark": (45, 45, 50), "light": (225, 225, 220)}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Object diameter as a fraction of the image when several share the 3x3 grid (cell = 1/3).
GRID_SIZES = {"small": 0.17, "large": 0.27}  # + jitter: a gap is always left


def _plural(shape: str) -> str:
    return shape + "s"


def _draw(draw: ImageDraw.ImageDraw, shape: str, cy: float, cx: float, half: float, rgb) -> None:
    box = [cx - half, cy - half, cx + half, cy + half]
    if shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "circle":
        draw.ellipse(box, fill=rgb)
    else:  # upward triangle in the same box, as synthclip_jax.data.shapes.render draws it
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=rgb)


def scene(seed: int, size: int) -> tuple[str, Image.Image]:
    """(caption, RGB image of size x size) of the scene with this seed."""
    caption, _, image = scene_captions(seed, size)
    return caption, image


def scene_captions(seed: int, size: int) -> tuple[str, str, Image.Image]:
    """(detailed caption, short web caption, RGB image) of the scene with this seed."""
    rng = np.random.default_rng(seed)
    pick = lambda options: options[int(rng.integers(len(options)))]
    bg_name = pick(list(BACKGROUNDS))
    # Objects must stand out from the background: no white on light, no black on dark.
    colors = [c for c in COLORS if not (c == "white" and bg_name == "light")
              and not (c == "black" and bg_name == "dark")]
    image = Image.new("RGB", (size, size), BACKGROUNDS[bg_name])
    draw = ImageDraw.Draw(image)
    n_groups = 1 + int(rng.integers(2))
    counts = [1 + int(rng.integers(3)) for _ in range(n_groups)]
    if n_groups == 1 and counts[0] == 1:
        obj_size, color, shape, position = (pick(list(SIZES)), pick(colors), pick(SHAPES),
                                            pick(list(POSITIONS)))
        cy, cx = (np.array(POSITIONS[position]) + rng.uniform(-0.03, 0.03, 2)) * size
        _draw(draw, shape, cy, cx, SIZES[obj_size] * size / 2, COLORS[color])
        return (f"{caption_of(obj_size, color, shape, position)} on a {bg_name} background",
                f"a {color} {shape}", image)
    kinds = [(c, s) for c in colors for s in SHAPES]
    chosen = [kinds[i] for i in rng.choice(len(kinds), n_groups, replace=False)]
    cells = rng.permutation(9)[:sum(counts)]
    parts, web, k = [], [], 0
    for (color, shape), count in zip(chosen, counts):
        obj_size = pick(list(GRID_SIZES))
        for _ in range(count):
            row, col = divmod(int(cells[k]), 3)
            k += 1
            jitter = rng.uniform(-0.015, 0.015, 2)
            cy, cx = ((row + 0.5) / 3 + jitter[0]) * size, ((col + 0.5) / 3 + jitter[1]) * size
            _draw(draw, shape, cy, cx, GRID_SIZES[obj_size] * size / 2, COLORS[color])
        noun = shape if count == 1 else _plural(shape)
        parts.append(f"{COUNT_WORDS[count]} {obj_size} {color} {noun}")
        web.append(f"a {color} {shape}" if count == 1 else f"{color} {noun}")
    return f"{' and '.join(parts)} on a {bg_name} background", " and ".join(web), image
