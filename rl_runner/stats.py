"""Statistics over seeds: mean and spread, interquartile mean, percentile-bootstrap intervals.

A sweep has a handful of seeds per configuration, so the tables report the IQM (robust to one
diverged seed) and a bootstrap confidence interval next to the plain mean, as Agarwal et al. 2021
("Deep RL at the edge of the statistical precipice") recommend.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1: the spread between seeds, estimated from a
    sample of them); the std is None for one value, where there is no spread to estimate."""
    x = _as_array(values)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def iqm(values, axis: int | None = None):
    """Interquartile mean: drop int(0.25 * n) values from each end and average the rest, as
    scipy.stats.trim_mean(values, 0.25) does (so fewer than 4 values give the plain mean).

    With `axis`, one IQM per slice along that axis (an array), so it can be a bootstrap statistic.
    """
    x = np.asarray(values, dtype=float)
    if axis is None:
        x, axis = x.ravel(), -1
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of no values")
    cut = int(0.25 * n)
    kept = np.take(np.sort(x, axis=axis), np.arange(cut, n - cut), axis=axis)
    result = kept.mean(axis=axis)
    return float(result) if np.ndim(result) == 0 else result


def bootstrap_ci(values, statistic: Callable = np.mean, confidence: float = 0.95,
                 resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of `statistic` over `values`.

    Draws `resamples` samples of n values with replacement (numpy's default_rng(seed), so the same
    seed gives the same interval) and returns the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of the statistic over them. `statistic(samples, axis=1)` must reduce each row of
    the (resamples, n) array: numpy's reductions and `iqm` do. One value gives (v, v).
    """
    x = _as_array(values)
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    index_RN = rng.integers(0, x.size, size=(resamples, x.size))
    stats_R = np.asarray(statistic(x[index_RN], axis=1), dtype=float)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats_R, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _as_array(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("no values")
    return x
