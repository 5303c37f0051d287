"""Batched, sharded feature extraction for evaluation.

Every process holds the whole evaluation set (they are small: ImageNet val, COCO 5k); each global
batch is placed with `make_array_from_callback`, so every device encodes its own rows, on one
host or many. The last batch is padded to a multiple of the data shards and trimmed after.
"""
import jax
import numpy as np
from flax import nnx

from synthclip_jax import sharding


class Encoder:
    def __init__(self, graphdef, mesh, batch_size: int, rules=sharding.DEFAULT_RULES):
        shards = sharding.batch_shards(mesh)
        self.batch_size = max(shards, batch_size // shards * shards)
        self.mesh = mesh
        self.sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)

        def encoder(method):
            def encode(params, x):
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
        """(N, S, S, 3) normalised float32 -> (N, E) L2-normalised features."""
        return self._run(self._image, params, images)

    def texts(self, params, tokens: np.ndarray) -> np.ndarray:
        """(N, context_length) int32 -> (N, E) L2-normalised features."""
        return self._run(self._text, params, tokens)
