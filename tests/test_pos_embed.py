"""The NumPy position-embedding resize (models/pos_embed.py, used by training stages) equals
OpenCLIP's `resize_pos_embed` on the same array, growing and shrinking the grid."""
import numpy as np
import open_clip
import pytest
import torch

from synthclip_jax.models.pos_embed import resize_image_pos


@pytest.mark.parametrize("old,new", [(6, 16), (7, 14), (14, 7), (16, 6), (5, 5)])
def test_resize_equals_openclip(old, new):
    pos = np.random.default_rng(old * new).normal(size=(1 + old * old, 32)).astype(np.float32)
    model = open_clip.model.VisionTransformer(image_size=new * 4, patch_size=4, width=32,
                                              layers=1, heads=2, mlp_ratio=2.0, output_dim=8)
    state = {"visual.positional_embedding": torch.from_numpy(pos.copy())}
    open_clip.model.resize_pos_embed(state, type("CLIP", (), {"visual": model})())
    expected = state["visual.positional_embedding"].numpy()
    got = resize_image_pos(pos, 1 + new * new)
    assert got.shape == expected.shape == (1 + new * new, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
