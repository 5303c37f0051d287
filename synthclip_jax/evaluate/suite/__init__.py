"""Class names and prompt templates of the standard zero-shot suite, keyed by dataset name.

The data files are clip_benchmark's (`clip_benchmark/datasets/en_classnames.json` and
`en_zeroshot_classification_templates.json`, MIT), templates written with '{}' for the class;
ImageNet's names are OpenAI's (evaluate/imagenet_classnames.txt). A dataset's NAME in
`eval.zeroshot` / `--zeroshot NAME=SOURCE` picks them: its clip_benchmark key or a TFDS name
listed in ALIASES. No jax here (config_check imports it).
"""
import functools
import json
from pathlib import Path

from synthclip_jax.evaluate.templates import IMAGENET_CLASSNAMES_FILE, OPENAI_IMAGENET

PER_DATASET = "per_dataset"  # eval.templates value: each dataset its suite templates
FALLBACK_TEMPLATES = OPENAI_IMAGENET  # per_dataset for a name outside the suite
HERE = Path(__file__).parent

# TFDS and common names -> clip_benchmark keys.
ALIASES = {
    "imagenet": "imagenet1k", "imagenet2012": "imagenet1k", "imagenet_v2": "imagenet1k",
    "imagenetv2": "imagenet1k", "imagenet_sketch": "imagenet1k", "imagenet_r": "imagenet1k",
    "imagenet_a": "imagenet1k", "oxford_iiit_pet": "pets", "oxford_pets": "pets",
    "oxford_flowers102": "flowers", "flowers102": "flowers", "cars196": "cars",
    "stanford_cars": "cars", "aircraft": "fgvc_aircraft", "caltech101": "caltech101",
    "eurosat/rgb": "eurosat", "food-101": "food101", "sun397/tfds": "sun397",
}


@functools.cache
def _classnames() -> dict:
    names = json.loads((HERE / "classnames.json").read_text())
    names["imagenet1k"] = [n.strip() for n in IMAGENET_CLASSNAMES_FILE.read_text().splitlines()
                           if n.strip()]
    return names


@functools.cache
def _templates() -> dict:
    raw = json.loads((HERE / "templates.json").read_text())
    return {k: tuple(t.replace("{c}", "{}") for t in v) for k, v in raw.items()}


def key(name) -> str | None:
    if not name:
        return None
    name = name.lower()
    return ALIASES.get(name, name)


def names() -> list:
    return sorted(set(_classnames()) | set(_templates()))


def classnames(name) -> list | None:
    return _classnames().get(key(name))


def templates(name) -> tuple | None:
    return _templates().get(key(name))
