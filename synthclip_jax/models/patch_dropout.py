"""Patch dropout (FLIP; OpenCLIP's `PatchDropout`): during training each image keeps only a
random subset of its patch tokens, after the positional embedding and before the transformer,
so the towers compute on fewer tokens. The class token is always kept.

`model.image.patch_dropout = f` drops exactly round(f * N) of the N patches of every image
(rounded half up; at least one patch must stay, config_check). The subset differs per image and
per step and is a function of (seed, step) alone: the train step draws it from
`fold_in(key(seed), step)` (`kept_patch_indices`), so a resumed run draws the same subsets as
an uninterrupted one, on any mesh (partitionable threefry). The indices ride in the batch
(`batch['patch_keep']`, (B, K) int32), so gradient accumulation splits them with the images
and both passes of the 'full' mode see the same subset. Evaluation, export and `encode_image`
pass no indices and compute exactly the model without patch dropout.
"""
import math

import jax
import jax.numpy as jnp

# Folded into the seed's key first, so the patch subsets are their own random stream.
_STREAM = 0x50D0

BATCH_KEY = "patch_keep"


def num_kept(num_patches: int, fraction: float) -> int:
    """Patches kept of `num_patches` when `fraction` of them are dropped (round half up)."""
    return num_patches - math.floor(fraction * num_patches + 0.5)


def kept_patch_indices(seed: int, step, batch_size: int, num_patches: int, fraction: float):
    """(batch_size, K) int32: each image's kept patch indices (0-based among the patches, the
    class token not counted), ascending; K = num_kept(num_patches, fraction). `step` may be
    traced."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STREAM), step)
    scores = jax.random.uniform(key, (batch_size, num_patches))
    _, indices = jax.lax.top_k(scores, num_kept(num_patches, fraction))
    return jnp.sort(indices, axis=-1).astype(jnp.int32)


def keep_patches(tokens, indices):
    """tokens (B, 1 + N, D), class token first; indices (B, K) -> (B, 1 + K, D): the class
    token and the kept patches in their original order."""
    patches = jnp.take_along_axis(tokens[:, 1:], indices[..., None], axis=1)
    return jnp.concatenate([tokens[:, :1], patches], axis=1)


def with_patch_dropout(config, batch: dict, step, patch_size: int) -> dict:
    """The train step's batch with this step's kept-patch indices added (unchanged when
    `model.image.patch_dropout` is 0). The patch count follows the batch's images, so a stage
    at another resolution needs nothing else."""
    fraction = config.model.image.get("patch_dropout", 0.0)
    if not fraction:
        return batch
    b, h, w = batch["image"].shape[:3]
    num_patches = (h // patch_size) * (w // patch_size)
    indices = kept_patch_indices(config.seed, step, b, num_patches, fraction)
    return {**batch, BATCH_KEY: indices}
