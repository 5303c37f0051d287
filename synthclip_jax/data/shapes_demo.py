"""The demo's dataset, rendered on the spot: captioned shapes (`shapes.py`) as TFRecord shards +
eval sets; `data.procedural` configures it.

Training pairs never show the held-out colour/shape combinations (one shape per colour); the
zero-shot set classifies images of exactly those unseen combinations among all colour x shape
classes, so its accuracy measures composition, not memory. Retrieval uses fresh pairs of seen
combinations. Everything is a pure function of the seed; a `manifest.json` written last marks
the folder complete and records the settings: an interrupted render is redone, a finished one
with the same settings is reused, and one with other settings is deleted and rendered again
(the log says which settings changed), so old images never mix with new ones.
"""
import json

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from etils import epath
from PIL import Image

from synthclip_jax.data import shapes
from synthclip_jax.data.jpeg import encode_jpeg
from synthclip_jax.data.shard_files import ShardWriter, shard_name
from synthclip_jax.data.tfrecord import encode_example

HELD_OUT = frozenset((color, shapes.SHAPES[i % len(shapes.SHAPES)])
                     for i, color in enumerate(shapes.COLORS))


def sample_attributes(rng, held_out: bool):
    while True:
        size = rng.choice(list(shapes.SIZES))
        color = rng.choice(list(shapes.COLORS))
        shape = rng.choice(shapes.SHAPES)
        position = rng.choice(list(shapes.POSITIONS))
        if ((color, shape) in HELD_OUT) == held_out:
            return str(size), str(color), str(shape), str(position)


def render_pair(index: int, seed: int, image_size: int, held_out: bool, background=None):
    """(image, attributes); `background`, a list, receives the background's index."""
    rng = np.random.default_rng([seed, index])
    attrs = sample_attributes(rng, held_out)
    k = rng.integers(len(shapes.BACKGROUNDS))
    if background is not None:
        background.append(int(k))
    return shapes.render(*attrs, shapes.BACKGROUNDS[k], image_size, rng), attrs


def write_shards(folder, prefix, first_index, count, num_shards, seed, image_size,
                 web_captions=False):
    """Shards of rendered pairs. With `web_captions` (CLIPS's two roles), each record's caption
    is the detailed one (size, colour, count, position, background) and its web caption the
    short "a red circle"; otherwise the caption is the demo's "a large red circle at the top
    left"."""
    writers = [ShardWriter(str(folder / shard_name(prefix, s, num_shards)))
               for s in range(num_shards)]
    for i in range(first_index, first_index + count):
        background = []
        image, attrs = render_pair(i, seed, image_size, held_out=False, background=background)
        caption, web = shapes.caption_of(*attrs), ""
        if web_captions:
            caption = shapes.detailed_caption_of(*attrs, background[0])
            web = shapes.web_caption_of(attrs[1], attrs[2])
        writers[i % num_shards].write(encode_example(
            image=encode_jpeg(image, quality=95), captions=[caption], key=str(i),
            source="shapes", web_caption=web))
    for w in writers:
        w.close()
    return str(folder / f"{prefix}-*.tfrecord")


def demo_paths(folder) -> dict:
    folder = epath.Path(folder)
    return {"train": str(folder / "train" / "shapes-*.tfrecord"),
            "retrieval": str(folder / "retrieval" / "shapes-*.tfrecord"),
            "zeroshot": str(folder / "zeroshot")}


def rendered_settings(manifest) -> "dict | None":
    """The settings a finished render recorded; None if there is none (or it was torn)."""
    try:
        return json.loads(manifest.read_text())["settings"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def ensure_demo_data(folder, *, seed, image_size, num_train, num_retrieval,
                     zeroshot_per_class, web_captions=False) -> dict:
    """Renders (or reuses) the demo data in `folder`; returns the paths to configure."""
    folder = epath.Path(folder)
    paths = demo_paths(folder)
    settings = dict(seed=seed, image_size=image_size, num_train=num_train,
                    num_retrieval=num_retrieval, zeroshot_per_class=zeroshot_per_class)
    if web_captions:  # only when set: demo folders rendered before the key are still reused
        settings["web_captions"] = True
    manifest = folder / "manifest.json"
    old = rendered_settings(manifest)
    if old == settings:
        return paths
    if old is not None:  # the folder is the demo's own: render it again, never mix two renders
        changed = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items()
                            if old.get(k) != v)
        logging.warning("demo data in %s was rendered with other data.procedural settings "
                        "(%s); rendering it again", folder, changed)
        manifest.unlink()  # first: a render interrupted from here on is redone
    logging.info("rendering the demo dataset into %s (%d training pairs)", folder, num_train)
    for sub in ("train", "retrieval", "zeroshot"):
        if (folder / sub).exists():  # files of an earlier or interrupted render (other counts
            (folder / sub).rmtree()  # or seed) would otherwise stay among the new ones
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_shards(folder / "train", "shapes", 0, num_train, 4, seed, image_size, web_captions)
    write_shards(folder / "retrieval", "shapes", num_train, num_retrieval, 1, seed, image_size,
                 web_captions)
    for color in shapes.COLORS:
        for shape in shapes.SHAPES:
            (folder / "zeroshot" / f"{color}_{shape}").mkdir(exist_ok=True)
    for i in range(zeroshot_per_class * len(HELD_OUT)):
        image, (_, color, shape, _) = render_pair(10**9 + i, seed, image_size, held_out=True)
        Image.fromarray(image).save(folder / "zeroshot" / f"{color}_{shape}" / f"{i:05d}.png")
    manifest.write_text(json.dumps({
        "settings": settings, "held_out": sorted(map(list, HELD_OUT)),
        "classes": len(shapes.COLORS) * len(shapes.SHAPES)}, indent=2))
    return paths


def prepare(config, workdir) -> None:
    """If `data.train` is empty and `data.procedural.num_train` > 0, render the demo data into
    WORKDIR/data and point data.train (and empty eval.retrieval / eval.zeroshot) at it."""
    p = config.data.procedural
    if config.data.train or not p.num_train:
        return
    folder = epath.Path(workdir) / "data"
    if jax.process_index() == 0:
        ensure_demo_data(folder, seed=p.seed, image_size=p.image_size, num_train=p.num_train,
                         num_retrieval=p.num_retrieval, zeroshot_per_class=p.zeroshot_per_class,
                         web_captions=p.web_captions)
    multihost_utils.sync_global_devices("demo data rendered")
    paths = demo_paths(folder)
    config.data.train = paths["train"]
    config.eval.retrieval = config.eval.retrieval or paths["retrieval"]
    config.eval.zeroshot = config.eval.zeroshot or paths["zeroshot"]
