"""Resizing a ViT's learned position embeddings to another image size, in NumPy: what
OpenCLIP's `resize_pos_embed` computes (torch `interpolate(mode='bicubic', antialias=True,
align_corners=False)` over the patch grid, the class row kept), without torch, so that
training (a stage switching resolution, train/stages.py) can run it. The importer's
`--resize-pos-embed` (export/fit.py) calls torch itself; tests check both against OpenCLIP.

torch's antialiased bicubic is PIL's resampling: a separable filter, Keys' cubic with a = -0.5,
stretched by the scale when shrinking, its window cut at the border and its weights normalised
(aten's `_upsample_bicubic2d_aa`).
"""
import math

import numpy as np


def _cubic(x, a=-0.5):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix along one axis."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = int(max(center - support + 0.5, 0))
        hi = int(min(center + support + 0.5, n_in))
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) / stretch)
        matrix[i, lo:hi] = w / w.sum()
    return matrix


def resize_image_pos(pos: np.ndarray, num_tokens: int) -> np.ndarray:
    """(1 + g*g, D) class row + square patch grid -> (num_tokens, D), num_tokens = 1 + n*n."""
    old, new = math.isqrt(pos.shape[0] - 1), math.isqrt(num_tokens - 1)
    if old * old != pos.shape[0] - 1 or new * new != num_tokens - 1:
        raise ValueError(f"cannot resize {pos.shape[0]} position rows to {num_tokens}: not a "
                         "class row plus a square grid")
    if old == new:
        return np.asarray(pos)
    w = _weights(old, new)
    grid = np.asarray(pos[1:], np.float64).reshape(old, old, -1)
    grid = np.einsum("ih,jw,hwd->ijd", w, w, grid).reshape(new * new, -1)
    return np.concatenate([pos[:1], grid.astype(pos.dtype)], axis=0)
