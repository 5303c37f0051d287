"""The device top-k neighbour index against host brute force (8 fake devices)."""
import jax
import numpy as np
import pytest

from synthclip_jax import sharding
from synthclip_jax.data.neighbours import brute_force_neighbours, top_k_neighbours


def mesh_of(shape):
    return sharding.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)), jax.devices())


def test_equals_brute_force_with_ties_on_8_devices():
    # Small integer features: every dot product is exact in float32 and many are equal, so the
    # tie order (lower index first) is what is compared, not rounding.
    rng = np.random.default_rng(0)
    features = rng.integers(-2, 3, size=(203, 6)).astype(np.float32)  # 203: blocks padded
    want_sims, want_ids = brute_force_neighbours(features, 12)
    for shape in ((8, 1, 1), (2, 2, 2)):
        sims, ids = top_k_neighbours(features, 12, mesh_of(shape), query_chunk=50)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(sims, want_sims)


def test_unit_features_and_small_sets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want_sims, want_ids = brute_force_neighbours(x, 5)
    sims, ids = top_k_neighbours(x, 5, mesh_of((8, 1, 1)))
    np.testing.assert_array_equal(ids, want_ids)
    assert (ids[:, 0] == np.arange(37)).all()  # itself first
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)
    # Fewer records than devices x k: blocks are padded to k rows, k is cut to N.
    sims, ids = top_k_neighbours(x[:3], 10, mesh_of((8, 1, 1)))
    np.testing.assert_array_equal(ids, brute_force_neighbours(x[:3], 10)[1])
    assert ids.shape == (3, 3)
    approx = top_k_neighbours(x, 5, mesh_of((8, 1, 1)), approximate=True)[1]
    np.testing.assert_array_equal(approx, want_ids)  # exact on CPU
    with pytest.raises(ValueError, match="k=0"):
        top_k_neighbours(x, 0, mesh_of((8, 1, 1)))
