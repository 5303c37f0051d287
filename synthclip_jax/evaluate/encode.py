"""Batched, sharded feature extraction for evaluation.

Every process holds the whole evaluation set (they are small: ImageNet val, COCO 5k); each global
batch is placed with `make_array_from_callback`, so every device encodes its own rows, on one
host or many. The last batch is padded to a multiple of the data shards and trimmed after.
"""
import jax
import numpy as np
from flax import nnx

from synthclip_jax import sharding
from synthclip_jax.image_normalize import normalize


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

    def images(self, params, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) normalised float32, or uint8 pixels -> (N, E) L2-normalised features."""
        if images.dtype == np.uint8 and self.mean is None:
            raise ValueError("uint8 images need the Encoder's mean and std (data.mean/data.std)")
        return self._run(self._image, params, images)

    def texts(self, params, tokens: np.ndarray) -> np.ndarray:
        """(N, context_length) int32 -> (N, E) L2-normalised features."""
        return self._run(self._text, params, tokens)
