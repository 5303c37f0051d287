"""Images cross from host to device as uint8 and are normalised on the device (big_vision's way).

A float32 image is 4x the bytes of its uint8 pixels, in Grain's shared memory (worker ->
trainer), in the host-to-device copy, and in evaluation sets held in host memory. The sources
therefore emit uint8 (H, W, 3) pixels, and the jitted train step and evaluation Encoder apply
(x / 255 - mean) / std as their first operation, where it fuses with the patch embedding.
Float input passes through unchanged: it is taken to be normalised already (evaluation sets,
tests, callers from before uint8).
"""
import jax.numpy as jnp
import numpy as np


def normalize(images, mean, std):
    """uint8 pixels -> float32 (x / 255 - mean) / std; any float array is returned as is."""
    if images.dtype != jnp.uint8:
        return images
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    # The host's formula, term by term, so both paths round alike.
    return (images.astype(jnp.float32) / 255.0 - mean) / std
