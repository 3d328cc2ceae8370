"""Prediction intervals sized by a law's own out-of-sample errors (analysis/backtest.py's held-out runs).

A bootstrap CI covers the noise of the fitted points only; beyond them the law's form is wrong by an amount that
grows with the extrapolation. The backtest measures that error at the factors the data allow; a normalized
split-conformal interval carries it to the factor asked for: each error is divided by scale(its factor), the
(1-level)/2 and (1+level)/2 quantiles of those scores are multiplied by scale(asked factor).
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.90  # the prediction interval's nominal coverage
# scale(f) = SCALE_FLOOR + log10 f. On the published sweeps (docs/laws.md) the backtest errors grow nearly in
# proportion to log10 f from ~1.5x to 300x, so the floor is small: with 0.1 the 90% intervals of `fit auto`, scored
# out of sample, covered 88% of 419 held-out runs (1: 84%; 0.25: 87%). Chosen on those sets: one constant.
SCALE_FLOOR = 0.1
PI_METHOD = ("the bootstrap CI widened by the law's own backtest errors: log(observed/predicted) of every held-out "
             f"run, divided by {SCALE_FLOOR} + log10(its extrapolation factor), their split-conformal quantiles "
             "scaled back to the factor asked for")


def scale(factor: np.ndarray | float) -> np.ndarray:
    """How the form's error grows with the extrapolation factor f: SCALE_FLOOR + log10 f (f below 1: as f = 1)."""
    return SCALE_FLOOR + np.log10(np.maximum(np.asarray(factor, np.float64), 1.0))


def conformal(z: np.ndarray, q: float) -> float:
    """The ceil((n+1) q)-th smallest of n scores (split-conformal quantile), clipped to the sample's range."""
    k = min(max(math.ceil((len(z) + 1) * q), 1), len(z))
    return float(np.sort(z)[k - 1])


def interval(points: list[dict], pred: float, factor: float, ci: list[float] | None = None,
             level: float = LEVEL) -> dict:
    """The prediction interval at `factor` around pred from backtest points (loss, pred, factor); widened to hold
    the bootstrap CI (parameter noise) and pred itself."""
    points = [p for p in points if np.isfinite(p["pred"]) and p["pred"] > 0]  # failed predictions have no ratio
    if not points:
        return {"pi": [float("nan")] * 2, "pi_method": "no backtest errors"}
    z = np.array([math.log(p["loss"] / p["pred"]) for p in points]) / scale([p["factor"] for p in points])
    s = float(scale(factor))
    lo = pred * math.exp(min(conformal(z, (1 - level) / 2), 0.0) * s)
    hi = pred * math.exp(max(conformal(z, (1 + level) / 2), 0.0) * s)
    if ci is not None and all(np.isfinite(ci)):
        lo, hi = min(lo, ci[0]), max(hi, ci[1])
    return {"pi": [float(lo), float(hi)], "pi_level": level, "factor": float(factor), "backtest_points": len(points)}
