"""Batched, sharded feature extraction for evaluation.

Texts (prompts, captions: small) are held whole by every process; each global batch is placed
with `make_array_from_callback`, so every device encodes its own rows, on one host or many. The
last batch is padded to a multiple of the data shards and trimmed after. Images are streamed
(evaluate/stream.py): each process brings its own rows of a batch (`encode_local_batch`).
"""
import jax
import numpy as np
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.run.files import DamagedFile
from synthclip_jax.image_normalize import normalize


class NonFiniteFeatures(DamagedFile):
    """Features holding NaN or inf: the weights do (a diverged run, damaged weights). Every
    metric over them would be a number that means nothing, so evaluation stops instead."""


def finite(features: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(features).all():
        raise NonFiniteFeatures(
            f"{what} features are not finite (NaN or inf): the model's weights hold non-finite values (a diverged run or damaged "
            "weights); evaluate an earlier checkpoint or re-import intact weights")
    return features


class Encoder:
    """`images` takes normalised float32 or uint8 pixels, which it normalises on the device with
    `mean` and `std` (the config's data.mean / data.std)."""

    def __init__(self, graphdef, mesh, batch_size: int, rules=sharding.DEFAULT_RULES,
                 mean=None, std=None):
        shards = sharding.batch_shards(mesh)
        self.mean, self.std = mean, std
        self.batch_size = max(shards, batch_size // shards * shards)
        self.mesh = mesh
        self.sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)

        def encoder(method):
            def encode(params, x):
                if method == "encode_image":
                    x = normalize(x, mean, std)
                with sharding.compute_layout(mesh, rules):  # FSDP: gather weights per layer
                    return getattr(nnx.merge(graphdef, params), method)(x)
            return jax.jit(encode, out_shardings=rep)

        self._image = encoder("encode_image")
        self._text = encoder("encode_text")

        def encode_tagged(params, images, tags):
            images = normalize(images, mean, std)
            with sharding.compute_layout(mesh, rules):
                return nnx.merge(graphdef, params).encode_image(images), tags
        # tags (row index, label) travel with the rows, so every process gets every row's.
        self._tagged = jax.jit(encode_tagged, out_shardings=(rep, rep))

    def _run(self, fn, params, data: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(data), self.batch_size):
            chunk = data[start:start + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            x = jax.make_array_from_callback(chunk.shape, self.sharding, lambda idx: chunk[idx])
            out.append(np.asarray(fn(params, x))[:len(chunk) - pad])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def encode_local_batch(self, params, images: np.ndarray, tags: np.ndarray):
        """This process's rows of a global batch: images (B/P, S, S, 3), tags (B/P, T) int32 ->
        (features (B, E), tags (B, T)) of the whole global batch, on every process."""
        images, tags = (jax.make_array_from_process_local_data(self.sharding, x)
                        for x in (images, tags))
        features, tags = self._tagged(params, images, tags)
        return finite(np.asarray(features), "image"), np.asarray(tags)

    def images(self, params, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) normalised float32, or uint8 pixels -> (N, E) L2-normalised features."""
        if images.dtype == np.uint8 and self.mean is None:
            raise ValueError("uint8 images need the Encoder's mean and std (data.mean/data.std)")
        return finite(self._run(self._image, params, images), "image")

    def texts(self, params, tokens: np.ndarray) -> np.ndarray:
        """(N, context_length) int32 -> (N, E) L2-normalised features."""
        return finite(self._run(self._text, params, tokens), "text")
