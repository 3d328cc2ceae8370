"""Chinchilla by variable projection: search (alpha, beta); for each, E, A, B >= 0 by non-negative least squares.

The 5-parameter log-space problem is ill-conditioned (B and beta trade off); with the exponents fixed, the rest
is linear, so scipy's NNLS solves it exactly and the search is over two numbers only. Rows are weighted by 1/L, so
the least-squares residual is the relative error, close to the log residual Approach 3 uses (squared, not Huber:
NNLS is least squares). A grid over (alpha, beta) finds the basin; Nelder-Mead refines it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from scipy.optimize import minimize, nnls
from testbed.analysis import fit, laws

EXPONENTS = np.round(np.arange(0.02, 1.5001, 0.02), 4)  # the (alpha, beta) search grid
LAW = dataclasses.replace(laws.CHINCHILLA, name="chinchilla-vp", grid={})


def _inner(ab: np.ndarray, logN, logD, y, w) -> tuple[float, np.ndarray]:
    """(weighted squared relative error, [E, A, B]) at exponents ab, by NNLS."""
    M = np.stack([np.ones_like(logN), np.exp(-ab[0] * logN), np.exp(-ab[1] * logD)], 1) / y[:, None]
    sw = np.sqrt(w)[:, None]
    coef, _ = nnls(M * sw, np.ones_like(y) * sw[:, 0])
    r = M @ coef - 1.0
    return float(np.sum(w * r * r)), coef


def _solve(logN, logD, y, w, start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(alpha, beta), [E, A, B], objective, whether the grid's best sat on its edge."""
    edge = False
    if start is None:
        vals = np.array([[_inner(np.array([a, b]), logN, logD, y, w)[0] for b in EXPONENTS] for a in EXPONENTS])
        i, j = np.unravel_index(np.argmin(vals), vals.shape)
        start = np.array([EXPONENTS[i], EXPONENTS[j]])
        edge = i in (0, len(EXPONENTS) - 1) or j in (0, len(EXPONENTS) - 1)
    res = minimize(lambda ab: _inner(ab, logN, logD, y, w)[0] if np.all(ab > 0) else np.inf, start,
                   method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-14, "maxiter": 4000})
    obj, coef = _inner(res.x, logN, logD, y, w)
    return res.x, coef, obj, edge


def _raw(ab: np.ndarray, coef: np.ndarray) -> dict[str, float]:
    with np.errstate(divide="ignore"):
        e, a, b = np.log(coef)
    return {"e": float(e), "a": float(a), "b": float(b), "alpha": float(ab[0]), "beta": float(ab[1])}


def fit_vp(X: np.ndarray, y: np.ndarray, bootstrap: int = 0, seed: int = 0) -> fit.FitResult:
    """The variable-projection fit, with percentile CIs from refits of resampled points (from the optimum)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    fit.check_points(LAW, X, y)
    logN, logD = np.log(X[:, 0]), np.log(X[:, 1])
    t0 = time.perf_counter()
    ab, coef, obj, edge = _solve(logN, logD, y, np.ones_like(y), None)
    raw = _raw(ab, coef)
    params = LAW.natural(raw)
    zero = [k for k, c in zip("EAB", coef, strict=True) if c <= 0]
    diag = {"converged": not edge and not zero, "objective": obj, "method": "variable projection (NNLS + Nelder-Mead)",
            "exponent_grid": [float(EXPONENTS[0]), float(EXPONENTS[-1])], "on_grid_edge": edge,
            "at_bound": zero, "grid_fit_s": round(time.perf_counter() - t0, 3)}
    if edge or zero:
        why = (["the exponents' best grid point is on the grid's edge"] if edge else []) + (
            [f"{', '.join(zero)} hit the non-negativity bound"] if zero else [])
        diag["warning"] = "NOT CONVERGED: " + "; ".join(why)
    result = fit.FitResult(LAW, raw, params, LAW.derive(params), diag, len(y))
    if bootstrap:
        t1 = time.perf_counter()
        rng = np.random.default_rng(seed)
        rows, raws = [], []
        for w in rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=bootstrap).astype(np.float64):
            b_ab, b_coef, _, _ = _solve(logN, logD, y, w, ab)
            raw_b = _raw(b_ab, b_coef)
            raws.append([raw_b[k] for k in LAW.raw])
            p = LAW.natural(raw_b)
            rows.append({**p, **LAW.derive(p)})
        result.boot_raw = np.array(raws)
        result.boot = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        result.ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in result.boot.items()}
        diag["bootstrap"] = {"resamples": bootstrap, "seed": seed, "refits_start_at": "the point estimate",
                             "fit_s": round(time.perf_counter() - t1, 3)}
    return result
