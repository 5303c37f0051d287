"""Captioned shapes, drawn in memory: the toy data of this project (`data.source='shapes'`, the
demo's dataset, the data_gen shapes backend). Not "synthetic" data: here that word means
Stable Diffusion images of LLM captions.

Example i of a seed is a pure function of (seed, i): a shape of some size, colour and position
on a plain background, with the caption that states exactly that, e.g.
"a large red circle at the top left". Batches are contiguous index ranges, so the iterator state
is one integer and resume is exact; each JAX process produces only its own rows of every global
batch.

Captions are tokenized with a tiny word vocabulary laid out like OpenAI's BPE ids (start token
vocab_size-2, end token vocab_size-1 = the largest id, padding 0), so argmax (EOT) pooling works.
"""
import numpy as np

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "orange": (245, 140, 30), "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.22, "large": 0.42}
POSITIONS = {"top left": (0.28, 0.28), "top right": (0.28, 0.72), "bottom left": (0.72, 0.28),
             "bottom right": (0.72, 0.72), "center": (0.5, 0.5)}
BACKGROUNDS = ((128, 128, 128), (90, 110, 140), (150, 135, 110))
BACKGROUND_NAMES = ("grey", "slate", "tan")  # of BACKGROUNDS, for the detailed caption
WORDS = sorted({"a", "at", "the", *COLORS, *SHAPES, *SIZES,
                *(w for p in POSITIONS for w in p.split())})


def caption_of(size: str, color: str, shape: str, position: str) -> str:
    return f"a {size} {color} {shape} at the {position}"


def detailed_caption_of(size: str, color: str, shape: str, position: str, background: int) -> str:
    """The long caption of CLIPS's synthetic role: size, colour, count, position, background."""
    return (f"one {size} {color} {shape} at the {position} of the image, on a plain "
            f"{BACKGROUND_NAMES[background]} background")


def web_caption_of(color: str, shape: str) -> str:
    """The short caption of CLIPS's web role (alt-text names the object, not the scene)."""
    return f"a {color} {shape}"


def render(size: str, color: str, shape: str, position: str, background, image_size: int,
           rng: np.random.Generator) -> np.ndarray:
    """uint8 (image_size, image_size, 3); a little jitter and noise so no two are identical."""
    n = image_size
    cy, cx = (np.array(POSITIONS[position]) + rng.uniform(-0.05, 0.05, 2)) * n
    half = SIZES[size] * n / 2
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    if shape == "square":
        mask = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    elif shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
    else:  # upward triangle inside the same box
        top = cy - half
        mask = (yy >= top) & (yy <= cy + half) & (np.abs(xx - cx) <= (yy - top) / 2)
    image = np.empty((n, n, 3), np.float32)
    image[:] = background
    image[mask] = COLORS[color]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def tokenize_words(caption: str, context_length: int, vocab_size: int) -> np.ndarray:
    if vocab_size < len(WORDS) + 3:
        raise ValueError(f"model.text.vocab_size={vocab_size} is too small for the shapes "
                         f"vocabulary ({len(WORDS)} words + pad/start/end)")
    ids = [vocab_size - 2] + [1 + WORDS.index(w) for w in caption.split()][:context_length - 2]
    ids.append(vocab_size - 1)
    out = np.zeros(context_length, np.int32)
    out[:len(ids)] = ids
    return out


class ShapesSource:
    """Infinite, seeded, exactly resumable stream of host-local batches."""

    def __init__(self, *, seed: int, global_batch: int, image_size: int, context_length: int,
                 vocab_size: int, mean, std, process_index: int = 0, process_count: int = 1):
        # The trainer checked that the batch divides over the processes (sharding.check_batch_size).
        self.seed, self.global_batch = seed, global_batch
        self.local_batch = global_batch // process_count
        self.first_row = process_index * self.local_batch
        self.image_size, self.context_length, self.vocab_size = (
            image_size, context_length, vocab_size)
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)
        # Global examples consumed, not batches: a `train.stages` batch size switch continues
        # from the next example.
        self.next_example = 0

    @property
    def next_batch(self) -> int:
        """Batches of this source's size drawn, counted from example 0."""
        return self.next_example // self.global_batch

    def example(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        pick = lambda options: options[rng.integers(len(options))]
        attrs = (pick(list(SIZES)), pick(list(COLORS)), pick(SHAPES), pick(list(POSITIONS)))
        bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        image = render(*attrs, bg, self.image_size, rng)
        return image, caption_of(*attrs)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        start = self.next_example + self.first_row
        images, tokens = [], []
        for i in range(start, start + self.local_batch):
            image, caption = self.example(i)
            images.append(image)
            tokens.append(tokenize_words(caption, self.context_length, self.vocab_size))
        self.next_example += self.global_batch
        images = (np.stack(images).astype(np.float32) / 255.0 - self.mean) / self.std
        return {"image": images, "text": np.stack(tokens)}

    def stats(self) -> dict:
        """Counters for the metrics (the data sources' common interface): rendered data has no
        corrupt records."""
        return {}

    def get_state(self) -> dict:
        return {"next_example": self.next_example, "seed": self.seed}

    def set_state(self, state: dict):
        if state["seed"] != self.seed:
            raise ValueError(f"checkpointed data iterator has seed={state['seed']}, but the "
                             f"config gives {self.seed}; resume with the same config")
        # checkpoints from before next_example counted batches of their global_batch
        self.next_example = int(state["next_example"] if "next_example" in state
                                else state["next_batch"] * state["global_batch"])
