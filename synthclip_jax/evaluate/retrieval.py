"""Image-text retrieval Recall@K (`eval.retrieval`), COCO/Flickr protocol, over TFRecord shards
or a TFDS caption dataset (evaluate/sources.py).

Every caption of a record is a text query/candidate. Image->text: an image is a hit at K if any of
its captions ranks in its top K. Text->image: each caption query counts once, a hit at K if its
own image ranks in its top K. Captions are read in one pass (text only); images are streamed.
"""
import numpy as np

from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.evaluate import sources, stream
from synthclip_jax.evaluate.zeroshot import metric_prefix

KS = (1, 5, 10)


class RetrievalSet:
    def __init__(self, source: str, image_size: int, mean, std, context_length: int,
                 name: str | None = None, tfds_data_dir: str = "", read_threads: int = 16,
                 read_ahead: int = 64, tokenizer=None):
        """`tokenizer`: the model's (`data/text_tokenizer.tokenizer_of`); default OpenAI BPE."""
        self.name, self.source = name, str(source)
        self.reader = sources.open_source(self.source, tfds_data_dir, task="retrieval")
        self.preprocess = stream.Preprocess(image_size, tuple(mean), tuple(std), read_threads,
                                            read_ahead)
        captions, owner = [], []
        for i in range(len(self.reader)):
            texts = self.reader.record(i)[1]
            captions += texts
            owner += [i] * len(texts)
        self.tokens = (tokenizer or tokenize)(captions, context_length)
        self.caption_image = np.asarray(owner)

    @property
    def images(self) -> np.ndarray:
        """The whole set decoded (tests; evaluation streams)."""
        return np.stack([self.preprocess.decode(self.reader.record(i)[0], self.reader.where(i))
                         for i in range(len(self.reader))])


def recalls(similarity: np.ndarray, caption_image: np.ndarray, ks=KS,
            prefix: str = "retrieval/") -> dict:
    """similarity: (num_images, num_captions) scores; caption_image[j] = image of caption j."""
    n_img = similarity.shape[0]
    # Rank of every (image, caption) score within its image's row and its caption's column.
    order_i2t = np.argsort(-similarity, axis=1)
    rank_i2t = np.empty_like(order_i2t)
    np.put_along_axis(rank_i2t, order_i2t, np.arange(similarity.shape[1])[None], axis=1)
    own = caption_image[None, :] == np.arange(n_img)[:, None]
    best_i2t = np.where(own, rank_i2t, np.iinfo(rank_i2t.dtype).max).min(axis=1)
    order_t2i = np.argsort(-similarity, axis=0)
    rank_t2i = np.empty_like(order_t2i)
    np.put_along_axis(rank_t2i, order_t2i, np.arange(n_img)[:, None], axis=0)
    own_rank_t2i = rank_t2i[caption_image, np.arange(similarity.shape[1])]
    out = {}
    for k in ks:
        out[f"{prefix}i2t_R@{k}"] = float(np.mean(best_i2t < k))
        out[f"{prefix}t2i_R@{k}"] = float(np.mean(own_rank_t2i < k))
    out[f"{prefix}chance_t2i_R@1"] = 1.0 / n_img
    return out


def evaluate(encoder, params, data: RetrievalSet, ks=KS, progress: bool = False) -> dict:
    image_features, _ = stream.image_features(
        encoder, params, data.reader, data.preprocess, with_label=False,
        desc=f"retrieval {data.name or ''}".strip(), progress=progress)
    text_features = encoder.texts(params, data.tokens)
    return recalls(image_features @ text_features.T, data.caption_image, tuple(ks),
                   metric_prefix("retrieval", data.name))
