"""Linear probe and few-shot probe on frozen image features (CLIP/SLIP protocol).

Features of a train and a test split are extracted (streamed, evaluate/stream.py); a multinomial
logistic regression with L2 penalty is fit full-batch with L-BFGS (optax) in JAX. Its objective
is scikit-learn's `LogisticRegression(C=C)` divided by C*N: mean cross-entropy +
||W||^2 / (2 C N), the bias unpenalised. C is chosen on a held-out part of the train split
(VALIDATION_FRACTION, seeded) over the log grid C_GRID (CLIP sweeps 1e-6..1e6); the probe is then
refit on the whole train split with that C and scored on the test split. A k-shot probe fits on
k seeded examples per class of the train split (outside the held-out part), with C chosen the
same way on the held-out part.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from synthclip_jax.evaluate import sources, stream

C_GRID = tuple(10.0 ** np.arange(-6, 7))
VALIDATION_FRACTION = 0.2
MAX_ITER = 1000
TOLERANCE = 1e-5


class ProbeSets:
    def __init__(self, name: str, train: str, test: str, image_size: int, mean, std,
                 tfds_data_dir: str = "", read_threads: int = 16, read_ahead: int = 64):
        self.name, self.train_source, self.test_source = name, train, test
        self.train = sources.open_source(train, tfds_data_dir, task="zeroshot")
        self.test = sources.open_source(test, tfds_data_dir, task="zeroshot")
        self.preprocess = stream.Preprocess(image_size, tuple(mean), tuple(std), read_threads,
                                            read_ahead)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def fit(features, labels, weights, l2, num_classes: int, max_iter: int = MAX_ITER,
        tol=TOLERANCE):
    """(W (D, K), b (K,)) minimising the weighted mean CE + l2/2 ||W||^2, full batch, L-BFGS.
    Rows of weight 0 take no part: one compiled shape serves every subset of the train split."""
    dim = features.shape[1]
    params = (jnp.zeros((dim, num_classes), features.dtype), jnp.zeros(num_classes,
                                                                       features.dtype))

    def objective(p):
        w, b = p
        ce = optax.softmax_cross_entropy_with_integer_labels(features @ w + b, labels)
        return jnp.sum(ce * weights) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(w * w)

    solver = optax.lbfgs()  # zoom line search (strong Wolfe), as scipy's L-BFGS-B uses
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                       value_fn=objective)
        return optax.apply_updates(p, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return (count == 0) | ((count < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

    params, _ = jax.lax.while_loop(running, step, (params, solver.init(params)))
    return params


def fit_grid(features, labels, weights, l2s, num_classes: int):
    """One probe per L2 strength in `l2s`: (W (G, D, K), b (G, K)). A loop of one compiled
    solve (vmap would run every solve as long as the slowest, line searches included)."""
    fits = [fit(features, labels, weights, l2, num_classes) for l2 in l2s]
    return tuple(jnp.stack(a) for a in zip(*fits))


def predictions(params, features) -> np.ndarray:
    w, b = (np.asarray(a) for a in params)
    return np.argmax(np.einsum("nd,gdk->gnk", features, w) + b[:, None], axis=-1)


def split_validation(num: int, seed: int):
    """(fit indices, held-out indices) of the train split."""
    order = np.random.default_rng(seed).permutation(num)
    held = max(1, int(round(num * VALIDATION_FRACTION)))
    return np.sort(order[held:]), np.sort(order[:held])


def k_shot(labels: np.ndarray, candidates: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k seeded examples of each class among `candidates` (fewer where a class has fewer)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(candidates[labels[candidates] == c])[:k]
             for c in np.unique(labels[candidates])]
    return np.sort(np.concatenate(picks))


def probe(train_x, train_y, test_x, test_y, num_classes: int, seed: int = 0,
          subset: np.ndarray | None = None, grid=C_GRID):
    """(test top-1, chosen C) of the protocol above; `subset`: the k-shot train examples.
    The C of the grid with the best held-out accuracy wins (the smallest C on a tie)."""
    fit_idx, val_idx = split_validation(len(train_y), seed)
    if subset is not None:
        fit_idx = np.intersect1d(subset, fit_idx)
    final_idx = fit_idx if subset is not None else np.arange(len(train_y))

    def solve(rows, cs):
        weights = np.zeros(len(train_y), np.float32)
        weights[rows] = 1.0
        l2s = [np.float32(1.0 / (c * len(rows))) for c in cs]
        return fit_grid(train_x, train_y, weights, l2s, num_classes)

    held_out = np.mean(predictions(solve(fit_idx, grid), train_x[val_idx]) == train_y[val_idx],
                       axis=1)
    best = int(np.argmax(held_out))
    final = solve(final_idx, grid[best:best + 1])
    return float(np.mean(predictions(final, test_x)[0] == test_y)), grid[best]


def evaluate(encoder, params, data: ProbeSets, shots=(), seed: int = 0,
             progress: bool = False) -> dict:
    train_x, train_y = stream.image_features(encoder, params, data.train, data.preprocess,
                                             desc=f"linear probe {data.name} train",
                                             progress=progress)
    test_x, test_y = stream.image_features(encoder, params, data.test, data.preprocess,
                                           desc=f"linear probe {data.name} test",
                                           progress=progress)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    p = f"linear_probe/{data.name}/"
    top1, c = probe(train_x, train_y, test_x, test_y, num_classes, seed)
    out = {f"{p}top1": top1, f"{p}C": float(c)}
    fit_idx, _ = split_validation(len(train_y), seed)
    for k in shots:
        subset = k_shot(train_y, fit_idx, k, seed)
        out[f"{p}{k}shot_top1"], _ = probe(train_x, train_y, test_x, test_y, num_classes, seed,
                                           subset=subset)
    return out
