"""Linear probe time: ours (optax L-BFGS in JAX, synthclip_jax/evaluate/linear_probe.py) vs
scikit-learn's LogisticRegression (lbfgs) running the same protocol on the same features.

  python -m tools.bench.linear_probe [--train 5000] [--test 2000] [--dim 256] [--classes 50]

Features are Gaussian class blobs, L2-normalised (like CLIP image features). Both sweep the same
C grid on the same held-out 20% and refit on the whole train split. Our time is shown with and
without compilation (a second run on the same shapes reuses the compiled solver). Ends with
`ratio ours/peer = X.XX` (our compiled time over scikit-learn's; < 1 is faster).
"""
import argparse
import time
import warnings

import numpy as np


def blobs(n, rng, means):
    labels = rng.integers(0, len(means), n)
    x = means[labels] + rng.normal(size=(n, means.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=50)
    args = p.parse_args(argv)
    import jax
    from sklearn.linear_model import LogisticRegression

    from synthclip_jax.evaluate import linear_probe

    rng = np.random.default_rng(0)
    means = rng.normal(size=(args.classes, args.dim)) * 2.0 / np.sqrt(args.dim)
    train_x, train_y = blobs(args.train, rng, means)
    test_x, test_y = blobs(args.test, rng, means)
    print(f"{args.train} train / {args.test} test features, dim {args.dim}, {args.classes} "
          f"classes, {len(linear_probe.C_GRID)} C values; {jax.devices()[0].platform}",
          flush=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        ours, c = linear_probe.probe(train_x, train_y, test_x, test_y, args.classes)
        times.append(time.perf_counter() - start)
    print(f"ours: top-1 {ours:.4f} (C={c:g}) in {times[0]:.1f} s with compilation, "
          f"{times[1]:.1f} s compiled", flush=True)

    fit_idx, val_idx = linear_probe.split_validation(len(train_y), 0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = [LogisticRegression(C=c, max_iter=1000).fit(train_x[fit_idx], train_y[fit_idx])
                  .score(train_x[val_idx], train_y[val_idx]) for c in linear_probe.C_GRID]
        best = linear_probe.C_GRID[int(np.argmax(scores))]
        ref = LogisticRegression(C=best, max_iter=1000).fit(train_x, train_y).score(test_x,
                                                                                    test_y)
    peer = time.perf_counter() - start
    print(f"scikit-learn: top-1 {ref:.4f} (C={best:g}) in {peer:.1f} s")
    print(f"ratio ours/peer = {times[1] / peer:.2f}")


if __name__ == "__main__":
    main()
