"""Image-text retrieval Recall@K over TFRecord shards (`eval.retrieval`), COCO/Flickr protocol.

Every caption of a record is a text query/candidate. Image->text: an image is a hit at K if any of
its captions ranks in its top K. Text->image: each caption query counts once, a hit at K if its
own image ranks in its top K.
"""
import numpy as np

from synthclip_jax.data.tfrecord import TFRecordShards, decode_example
from synthclip_jax.data.tokenizer import tokenize
from synthclip_jax.data.transforms import center_crop_box, decode_crop_normalize

KS = (1, 5, 10)


class RetrievalSet:
    def __init__(self, pattern: str, image_size: int, mean, std, context_length: int,
                 tokenizer=None):
        """`tokenizer`: the model's (`data/text_tokenizer.tokenizer_of`); default OpenAI BPE."""
        shards = TFRecordShards(pattern)
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        images, captions, owner = [], [], []
        for i in range(len(shards)):
            path, offset = shards.location(i)
            example = decode_example(shards[i], where=f"{path} at offset {offset}")
            images.append(decode_crop_normalize(example["image"], center_crop_box, image_size,
                                                mean, std))
            captions += example["captions"]
            owner += [i] * len(example["captions"])
        self.images = np.stack(images)
        self.tokens = (tokenizer or tokenize)(captions, context_length)
        self.caption_image = np.asarray(owner)


def recalls(similarity: np.ndarray, caption_image: np.ndarray) -> dict:
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
    for k in KS:
        out[f"retrieval/i2t_R@{k}"] = float(np.mean(best_i2t < k))
        out[f"retrieval/t2i_R@{k}"] = float(np.mean(own_rank_t2i < k))
    out["retrieval/chance_t2i_R@1"] = 1.0 / n_img
    return out


def evaluate(encoder, params, data: RetrievalSet) -> dict:
    image_features = encoder.images(params, data.images)
    text_features = encoder.texts(params, data.tokens)
    return recalls(image_features @ text_features.T, data.caption_image)
