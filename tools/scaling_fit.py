"""The power law of a dataset-scale sweep (tools/scaling_sweep.py), NumPy only.

Error (1 - top-1, or a loss) against dataset size N is fitted as e(N) = a * N**(-alpha) by
least squares on log-log axes, log e = log a - alpha log N, as the Scaling-laws paper draws
its curves (straight lines on log-log axes). Two series' fits cross where a1 N**-alpha1 =
a2 N**-alpha2: log N = (log a1 - log a2) / (alpha1 - alpha2), the scale beyond which the series
with the larger exponent is ahead (None when the exponents are equal).
"""
import math

import numpy as np


def fit_power_law(scales, errors) -> dict:
    """{'a', 'alpha', 'r2', 'points'} of e = a * N**-alpha over the points with e > 0."""
    n, e = np.asarray(scales, np.float64), np.asarray(errors, np.float64)
    keep = (e > 0) & (n > 0)
    if keep.sum() < 2 or len(set(n[keep])) < 2:
        return {"a": None, "alpha": None, "r2": None, "points": int(keep.sum())}
    x, y = np.log(n[keep]), np.log(e[keep])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual ** 2).sum() / total) if total > 0 else 1.0
    return {"a": float(math.exp(intercept)), "alpha": float(-slope), "r2": r2,
            "points": int(keep.sum())}


def predict(fit: dict, scales) -> np.ndarray:
    return fit["a"] * np.asarray(scales, np.float64) ** (-fit["alpha"])


def crossing_scale(fit1: dict, fit2: dict):
    """The dataset size where the two fitted laws give the same error, or None."""
    if None in (fit1["alpha"], fit2["alpha"]) or math.isclose(fit1["alpha"], fit2["alpha"]):
        return None
    log_n = (math.log(fit1["a"]) - math.log(fit2["a"])) / (fit1["alpha"] - fit2["alpha"])
    return float(math.exp(log_n)) if abs(log_n) < 700 else None
