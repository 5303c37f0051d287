"""SimCLIP's softmax-loss options (per-sample weights, label smoothing) and simple-clip's logit
bias, against torch's cross_entropy (SimCLIP's clip_loss) and a NumPy formula, on 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthclip_jax import losses, sharding


def mesh8():
    return sharding.make_mesh(dict(data=4, fsdp=2, tensor=1), jax.devices())


def features(b=16, e=8, seed=0):
    rng = np.random.default_rng(seed)
    img, txt = (rng.normal(size=(b, e)).astype(np.float32) for _ in range(2))
    return img, txt, rng.uniform(0.2, 2.0, size=b).astype(np.float32)


def simclip_clip_loss(logits, alpha, weights):
    """SimCLIP models/utils.py clip_loss, in torch."""
    import torch
    import torch.nn.functional as F
    logits = torch.tensor(logits, dtype=torch.float64)
    labels = torch.arange(len(logits))
    w = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    return float((F.cross_entropy(logits, labels, label_smoothing=alpha, weight=w)
                  + F.cross_entropy(logits.T, labels, label_smoothing=alpha, weight=w)) / 2)


def numpy_loss(logits, alpha, weights):
    b = len(logits)
    w = np.ones(b) if weights is None else weights.astype(np.float64)
    total = 0.0
    for l in (logits.astype(np.float64), logits.T.astype(np.float64)):
        ce = np.log(np.exp(l).sum(1, keepdims=True)) - l  # ce[i, c] = -log p_i(c)
        total += ((1 - alpha) * w * np.diag(ce) + alpha / b * (ce * w[None]).sum(1)).sum()
    return total / (2 * w.sum())


@pytest.mark.parametrize("alpha,weighted", [(0.0, True), (0.1, False), (0.1, True)])
def test_weights_and_label_smoothing_match_torch(alpha, weighted):
    img, txt, w = features()
    weights = w if weighted else None
    scale = np.float32(np.log(5.0))
    logits = np.exp(scale) * img @ txt.T
    want = simclip_clip_loss(logits, alpha, weights)
    np.testing.assert_allclose(numpy_loss(logits, alpha, weights), want, rtol=1e-10)
    loss_fn = losses.make_contrastive_loss("softmax", mesh8(), label_smoothing=alpha)
    out = losses.ContrastiveOutputs(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale),
                                    jnp.zeros(()))
    got = jax.jit(loss_fn)(out, None if weights is None else jnp.asarray(weights))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.slow
def test_defaults_unchanged_and_bias_has_no_effect():
    img, txt, w = features(seed=1)
    mesh = mesh8()
    out = losses.ContrastiveOutputs(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(2.0),
                                    jnp.asarray(-3.0))
    plain = losses.make_contrastive_loss("softmax", mesh)
    biased = losses.make_contrastive_loss("softmax", mesh, softmax_bias=True)
    np.testing.assert_allclose(float(plain(out)), numpy_loss(np.exp(2.0) * img @ txt.T, 0, None),
                               rtol=1e-5)
    np.testing.assert_allclose(float(biased(out)), float(plain(out)), rtol=1e-6)
    ones = plain(out, jnp.ones(16))
    np.testing.assert_allclose(float(ones), float(plain(out)), rtol=1e-6)
    grads = jax.grad(lambda o: biased(o, jnp.asarray(w)))(out)
    assert float(grads.logit_bias) == pytest.approx(0.0, abs=1e-6)  # as simple-clip's b
    with pytest.raises(ValueError, match="softmax loss, not 'sigmoid'"):
        losses.make_contrastive_loss("sigmoid", mesh, label_smoothing=0.1)
    with pytest.raises(ValueError, match="per-sample weights"):
        losses.make_contrastive_loss("sigmoid", mesh)(out, jnp.ones(16))
