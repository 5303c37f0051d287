"""Classifier evaluation (`eval.classify`, `--classify NAME=SOURCE`) as the Scaling-laws seed
does it (`Scaling/supervised/eval_imagenet_supervised.py`): Resize(256) (torchvision's default
bilinear, shorter side), CenterCrop(224), ToTensor, Normalize(mean, std) (the seed's 0.5, 0.5,
carried by the model's data.mean/std); top-1, top-5 and the mean cross-entropy of the logits.

At another image size the resize keeps the seed's ratio: round(size * 256 / 224) (timm's
crop_pct 0.875). SOURCE is any labelled set of evaluate/sources.py (class sub-folders, TFRecords
with `label`, TFDS). The classifier's logits travel through the streamed, sharded image path
(evaluate/stream.py: its `encode_image` is the logits).
"""
import io

import numpy as np
from PIL import Image

from synthclip_jax.evaluate import sources, stream
from synthclip_jax.evaluate.zeroshot import cross_entropy, metric_prefix, topk_accuracy

CROP_FRACTION = 224 / 256  # the seed's CenterCrop(224) of Resize(256)


def resize_size(image_size: int) -> int:
    return int(round(image_size / CROP_FRACTION))


def resize_center_crop(image_bytes: bytes, resize: int, crop: int) -> np.ndarray:
    """torchvision's Resize(resize) then CenterCrop(crop) of a PIL image, as uint8 (crop, crop,
    3): the shorter side to `resize` (bilinear, the longer int(resize * long / short)), then
    the central crop (top/left rounded as torchvision's center_crop)."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        img = img.convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            img = img.resize(size, Image.Resampling.BILINEAR)
        w, h = img.size
        if w < crop or h < crop:
            raise ValueError(f"{w}x{h} after Resize({resize}) is smaller than the {crop} crop")
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img, np.uint8)


class SeedPreprocess(stream.Preprocess):
    """stream.Preprocess with the seed's Resize + CenterCrop + Normalize."""

    def decode(self, image_bytes, where: str) -> np.ndarray:
        try:
            pixels = resize_center_crop(image_bytes, resize_size(self.image_size),
                                        self.image_size)
        except (OSError, ValueError) as bad:
            raise ValueError(f"cannot decode {where}: {bad}; remove or replace the "
                             "file/record") from bad
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


class ClassifySet:
    def __init__(self, source, image_size: int, mean, std, name: str | None = None,
                 tfds_data_dir: str = "", read_threads: int = 16, read_ahead: int = 64):
        self.name, self.source = name, str(source)
        self.reader = sources.open_source(self.source, tfds_data_dir, task="zeroshot")
        self.preprocess = SeedPreprocess(image_size, tuple(mean), tuple(std), read_threads,
                                         read_ahead)

    def check(self):
        if isinstance(self.reader, sources.ImageFolderReader):
            self.reader.check_headers()


def scores(logits: np.ndarray, labels: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}top1": topk_accuracy(logits, labels, 1),
            f"{prefix}top5": topk_accuracy(logits, labels, 5),
            f"{prefix}ce": cross_entropy(logits, labels)}


def evaluate(encoder, params, data: ClassifySet, num_classes: int,
             progress: bool = False) -> dict:
    logits, labels = stream.image_features(encoder, params, data.reader, data.preprocess,
                                           desc=f"classify {data.name or ''}".strip(),
                                           progress=progress)
    if labels.max(initial=-1) >= num_classes:
        raise ValueError(f"{data.source!r}: label {labels.max()} but the classifier has "
                         f"model.num_classes={num_classes}")
    return {**scores(logits, labels, metric_prefix("classify", data.name)),
            f"{metric_prefix('classify', data.name)}chance_top1": 1.0 / num_classes}
