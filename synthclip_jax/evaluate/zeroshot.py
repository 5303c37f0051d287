"""Zero-shot classification (`eval.zeroshot`) on any classification source (evaluate/sources.py).

Class names: a `classnames.txt` of the source, else the shipped suite's names for the dataset's
NAME (evaluate/suite.py), else the source's own (ImageFolder sub-folder names with '_' as
spaces, TFDS label names). Each class's classifier is the mean of its L2-normalised prompt
embeddings, renormalised, as CLIP; an image's prediction is the class of highest cosine
similarity. Images are streamed (evaluate/stream.py).
"""
import numpy as np

from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.evaluate import sources, stream, suite


class ZeroShotSet:
    def __init__(self, source, image_size: int, mean, std, name: str | None = None,
                 tfds_data_dir: str = "", read_threads: int = 16, read_ahead: int = 64):
        self.name, self.source = name, str(source)
        self.reader = sources.open_source(self.source, tfds_data_dir, task="zeroshot")
        self.preprocess = stream.Preprocess(image_size, tuple(mean), tuple(std), read_threads,
                                            read_ahead)
        self.classnames = resolve_classnames(self.reader, name, self.source)

    def check(self):
        """Cheap start-up checks: an ImageFolder's unreadable file is named now."""
        if isinstance(self.reader, sources.ImageFolderReader):
            self.reader.check_headers()

    @property
    def labels(self) -> np.ndarray:
        if isinstance(self.reader, sources.ImageFolderReader):
            return self.reader.labels
        return np.asarray([self.reader.record(i)[1] for i in range(len(self.reader))])

    @property
    def images(self) -> np.ndarray:
        """The whole set decoded (tests and the memory benchmark's old way; evaluation streams)."""
        return np.stack([self.preprocess.decode(self.reader.record(i)[0], self.reader.where(i))
                         for i in range(len(self.reader))])


def resolve_classnames(reader, name, source) -> list:
    names = reader.classnames if reader.own_classnames else None
    names = names or suite.classnames(name) or reader.classnames
    if not names:
        raise ValueError(f"{source!r}: no class names (add classnames.txt, or name the "
                         f"dataset after one of the shipped suite: {', '.join(suite.names())})")
    return names


def classifier(encoder, params, classnames, template_set, context_length: int,
               tokenizer=None):
    """template_set: a name of templates.TEMPLATE_SETS or a sequence of '{}' templates;
    `tokenizer`: the model's (`data/text_tokenizer.tokenizer_of`); default OpenAI BPE."""
    from synthclip_jax.evaluate.templates import templates
    prompts = [t.format(c) for c in classnames
               for t in (templates(template_set) if isinstance(template_set, str)
                         else template_set)]
    feats = encoder.texts(params, (tokenizer or tokenize)(prompts, context_length))
    feats = feats.reshape(len(classnames), -1, feats.shape[-1]).mean(axis=1)
    return feats / np.linalg.norm(feats, axis=-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy (torch's F.cross_entropy), in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def metric_prefix(kind: str, name) -> str:
    return f"{kind}/{name}/" if name else f"{kind}/"


def evaluate(encoder, params, data: ZeroShotSet, template_set, context_length: int,
             progress: bool = False, tokenizer=None) -> dict:
    """template_set: a template set name, or "per_dataset" (the suite's for data.name)."""
    if template_set == suite.PER_DATASET:
        template_set = suite.templates(data.name) or suite.FALLBACK_TEMPLATES
    weights = classifier(encoder, params, data.classnames, template_set, context_length,
                         tokenizer)
    features, labels = stream.image_features(encoder, params, data.reader, data.preprocess,
                                             desc=f"zeroshot {data.name or ''}".strip(),
                                             progress=progress)
    if labels.max(initial=-1) >= len(data.classnames):
        raise ValueError(f"{data.source!r}: label {labels.max()} but only "
                         f"{len(data.classnames)} class names")
    logits = features @ weights.T
    p = metric_prefix("zeroshot", data.name)
    # The Scaling-laws seed also reports the mean cross-entropy of logit_scale * logits.
    scale = float(np.exp(np.asarray(params["logit_scale"], np.float64)))
    return {f"{p}top1": topk_accuracy(logits, labels, 1),
            f"{p}top5": topk_accuracy(logits, labels, 5),
            f"{p}ce": cross_entropy(scale * logits, labels),
            f"{p}chance_top1": 1.0 / len(data.classnames)}
