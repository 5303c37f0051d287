"""Zero-shot classification on an ImageFolder-style set (`eval.zeroshot`).

Classes are the sub-folders of the root in sorted order; their names are the folder names with
'_' as spaces, or the lines of `classnames.txt` in the root if present (same order). Each class's
classifier is the mean of its L2-normalised prompt embeddings (`eval.templates`), renormalised,
as CLIP; an image's prediction is the class of highest cosine similarity.
"""
from etils import epath

import numpy as np

from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.data.transforms import center_crop_box, decode_crop_normalize
from synthclip_jax.evaluate.templates import templates

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class ZeroShotSet:
    def __init__(self, root, image_size: int, mean, std):
        root = epath.Path(root)  # local or gs://
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not folders:
            raise FileNotFoundError(f"eval.zeroshot={str(root)!r}: no class sub-folders found")
        names_file = root / "classnames.txt"
        if names_file.exists():
            names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
            if len(names) != len(folders):
                raise ValueError(f"{names_file} has {len(names)} names for {len(folders)} "
                                 "class folders")
        else:
            names = [f.name.replace("_", " ") for f in folders]
        self.classnames = names
        paths, labels = [], []
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise FileNotFoundError(f"eval.zeroshot={str(root)!r}: no images in class folders")
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.images = np.stack([load_image(p, image_size, mean, std) for p in paths])
        self.labels = np.asarray(labels)


def load_image(path, image_size: int, mean, std) -> np.ndarray:
    try:
        return decode_crop_normalize(path.read_bytes(), center_crop_box, image_size, mean, std)
    except (OSError, ValueError) as bad:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"eval.zeroshot: cannot decode {path}: {bad}; remove or replace the "
                         "file") from bad


def classifier(encoder, params, classnames, template_set: str, context_length: int,
               tokenizer=None):
    """`tokenizer`: the model's (`data/text_tokenizer.tokenizer_of`); default OpenAI BPE."""
    prompts = [t.format(c) for c in classnames for t in templates(template_set)]
    feats = encoder.texts(params, (tokenizer or tokenize)(prompts, context_length))
    feats = feats.reshape(len(classnames), -1, feats.shape[-1]).mean(axis=1)
    return feats / np.linalg.norm(feats, axis=-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def evaluate(encoder, params, data: ZeroShotSet, template_set: str, context_length: int,
             tokenizer=None) -> dict:
    weights = classifier(encoder, params, data.classnames, template_set, context_length,
                         tokenizer)
    logits = encoder.images(params, data.images) @ weights.T
    return {"zeroshot/top1": topk_accuracy(logits, data.labels, 1),
            "zeroshot/top5": topk_accuracy(logits, data.labels, 5),
            "zeroshot/chance_top1": 1.0 / len(data.classnames)}
