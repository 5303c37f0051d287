"""The optimizer (clip + masked AdamW + non-finite skip) against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np

from synthclip_jax.config_base import base
from synthclip_jax.train.optimizer import make_optimizer, make_schedule


def numpy_step(p, g, m, v, t, lr, o, wd, mask, clip):
    """Clip by the global norm, then AdamW (decoupled decay on masked leaves), step t >= 1."""
    norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
    scale = min(1.0, clip / norm) if clip > 0 else 1.0
    out = {}
    for k in p:
        gk = g[k] * scale
        m[k] = o.b1 * m[k] + (1 - o.b1) * gk
        v[k] = o.b2 * v[k] + (1 - o.b2) * gk * gk
        mhat, vhat = m[k] / (1 - o.b1 ** t), v[k] / (1 - o.b2 ** t)
        out[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + o.eps) + wd * mask[k] * p[k])
    return out, norm


def test_matches_numpy_adamw_with_clipping_and_skips_nonfinite():
    config = base()
    config.lr, config.total_steps, config.warmup_steps = 1e-2, 100, 2
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
    mask = {"w": 1.0, "bias": 0.0}  # biases are not decayed
    opt = make_optimizer(config, params)
    apply = jax.jit(opt.apply)
    state = opt.init(params)
    ours = jax.tree.map(jnp.asarray, params)
    ref = dict(params)
    m = {k: np.zeros_like(x) for k, x in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    schedule = make_schedule(config)
    t = 0
    for gscale in (10.0, 0.01, np.nan, 3.0):  # clipped, not clipped, skipped, clipped
        grads = {k: (gscale * rng.normal(size=x.shape)).astype(np.float32)
                 for k, x in params.items()}
        before = ours
        ours, state, norm = apply(ours, grads, state)
        if np.isnan(gscale):
            assert not np.isfinite(float(norm))
            assert int(state.nonfinite_in_a_row) == 1 and int(state.nonfinite_total) == 1
            for k in ref:  # nothing moved
                np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(before[k]))
            continue
        lr = float(schedule(t))  # the skipped step did not advance AdamW's count
        t += 1
        ref, ref_norm = numpy_step(ref, grads, m, v, t, lr, config.optim, config.weight_decay,
                                   mask, config.optim.grad_clip_norm)
        np.testing.assert_allclose(float(norm), ref_norm, rtol=1e-5)
        for k in ref:
            np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-5, atol=1e-6)
    assert int(state.nonfinite_in_a_row) == 0 and int(state.nonfinite_total) == 1
