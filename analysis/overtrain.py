"""Over-training and downstream laws (Gadre et al. 2024, "Language models scale reliably with over-training").

With the token multiplier M = D / N and compute C = 6 N D, the loss of a model trained M tokens per parameter is
L(C, M) = E + (a M^eta + b M^-eta) C^-eta. Substituting C = 6 N^2 M shows it is Chinchilla with equal exponents:
L = E + A / N^(2 eta) + B / D^(2 eta) with A = a 6^-eta and B = b 6^-eta, which is the form the authors' code fits
(mlfoundations/scaling scaling/laws.py: alpha N^c + beta 6^(c/2) (M N)^c + E, so alpha = A, beta = b, c = -2 eta).
At fixed C the loss is lowest at M_opt = (b / a)^(1 / (2 eta)). Downstream average top-1 error follows the loss as
Err(L) = eps - k exp(-gamma L): eps is the error a model with infinite loss would have (about chance).

Both laws fit like any other (analysis/fit.py: log-space Huber, damped Newton from every start of the grid);
objective="lsq" fits them as the authors did (least squares on L, then on Err), which reproduces their numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import logsumexp
from testbed.analysis import fit, load
from testbed.analysis.laws import Law

from testbed.config import ConfigError

# below this ratio Err / eps the downstream prediction is treated as "no longer positive" (see _downstream_log)
ERR_FLOOR = 1e-13


# --- over-training law -----------------------------------------------------------------------------------------

def _overtrain_log(theta, X):
    """log L = LSE(e, a + eta (log M - log C), b - eta (log M + log C)): no overflow for any C, M, eta."""
    e, a, b, eta = theta[0], theta[1], theta[2], theta[3]
    logC, logM = jnp.log(X[:, 0]), jnp.log(X[:, 1])
    terms = jnp.stack([jnp.broadcast_to(e, logC.shape), a + eta * (logM - logC), b - eta * (logM + logC)])
    return logsumexp(terms, axis=0)


def _overtrain_natural(p: dict[str, float]) -> dict[str, float]:
    return {"E": float(np.exp(p["log_E"])), "a": float(np.exp(p["log_a"])), "b": float(np.exp(p["log_b"])),
            "eta": float(p["eta"])}


def overtrain_derived(q: dict[str, float]) -> dict[str, float]:
    """The Chinchilla form with C = 6 N D (A, B, alpha = beta = 2 eta) and the compute-optimal multiplier."""
    eta = q["eta"]
    six = 6.0 ** -eta
    return {"A": float(q["a"] * six), "B": float(q["b"] * six), "alpha": 2 * eta, "beta": 2 * eta,
            "M_opt": float((q["b"] / q["a"]) ** (1.0 / (2 * eta))) if eta > 0 else float("nan")}


OVERTRAIN = Law(
    name="overtrain",
    formula="L = E + (a M^eta + b M^-eta) C^-eta  (M = D / N, C = 6 N D)",
    inputs=("C", "M"),
    raw=("log_E", "log_a", "log_b", "eta"),
    # a and b carry C^eta (C ~ 1e16-1e24, eta up to ~0.5), hence log a, log b up to ~25 as in Chinchilla's grid;
    # 5 x 6 x 6 x 5 = 900 starts (the authors' grid: 4 x 4 x 2 x 4 in their parametrisation, E from 0 to 10)
    grid={"log_E": (-1.0, -0.5, 0.0, 0.5, 1.0), "log_a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
          "log_b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "eta": (0.05, 0.1, 0.2, 0.35, 0.5)},
    log_predict=_overtrain_log,
    natural=_overtrain_natural,
    derive=overtrain_derived,
    bounds={"eta": (0.0, 2.0)},
)


# --- downstream error law --------------------------------------------------------------------------------------

def _downstream_log(theta, X):
    """log Err = log eps + log(1 - exp(u)), u = log k - log eps - gamma L (Err > 0 exactly when u < 0).

    Positivity guard: where u >= -ERR_FLOOR (the law would predict an error <= ~1e-13 eps, or a negative one, which
    the log cannot express) the prediction continues linearly, log eps + log(-expm1(-ERR_FLOOR)) - (u + ERR_FLOOR):
    finite, continuous, decreasing in u, with a gradient that steers the optimizer back to u < 0 instead of NaN.
    Data (0 < Err) never sits there, so any fit that matches the data has every point on the exact branch.
    """
    log_eps, log_k, gamma = theta[0], theta[1], theta[2]
    u = log_k - log_eps - gamma * X[:, 0]
    v = jnp.minimum(u, -ERR_FLOOR)
    return log_eps + jnp.log(-jnp.expm1(v)) - (u - v)


DOWNSTREAM = Law(
    name="downstream",
    formula="Err = eps - k exp(-gamma L)",
    inputs=("loss",),
    raw=("log_eps", "log_k", "gamma"),
    # eps is an error rate (<= 1, near chance); k exp(-gamma L) < eps over the data; 4 x 5 x 5 = 100 starts
    grid={"log_eps": (-1.0, -0.5, -0.25, 0.0), "log_k": (-2.0, -1.0, 0.0, 1.0, 2.0),
          "gamma": (0.1, 0.3, 0.5, 1.0, 2.0)},
    log_predict=_downstream_log,
    natural=lambda p: {"eps": float(np.exp(p["log_eps"])), "k": float(np.exp(p["log_k"])),
                       "gamma": float(p["gamma"])},
    bounds={"gamma": (0.0, 20.0)},
)


# --- fitting from a DataFrame ----------------------------------------------------------------------------------

def _rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Usable rows (analysis/load.py's `ok` flag) when the table has one, else all rows."""
    if "ok" in df.columns:
        return load.usable(df)
    return df.reset_index(drop=True), dict.fromkeys(load.REASONS, 0)


def _need(df: pd.DataFrame, law: str, cols: list[str], why: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"fit {law}: the data has no {', '.join(missing)} column; map one with --columns "
                          f"{missing[0]}=COLUMN ({why}; its columns: {', '.join(map(str, df.columns))})")


def overtrain_inputs(df: pd.DataFrame, compute: str = "C_6ND") -> np.ndarray:
    """[n, 2] = (C, M): M = D / N unless the table has an M column; C from `compute` ("C_6ND": 6 N D, the law's
    convention, computed from N and D when the column is absent; "C": the exact FLOPs column)."""
    if "M" in df.columns:
        M = df["M"].to_numpy(np.float64)
    else:
        _need(df, "overtrain", ["N", "D"], "the law reads M = D / N and C = 6 N D")
        M = df["D"].to_numpy(np.float64) / df["N"].to_numpy(np.float64)
    if compute == "C_6ND" and "C_6ND" not in df.columns:
        _need(df, "overtrain", ["N", "D"], "C = 6 N D")
        C = 6.0 * df["N"].to_numpy(np.float64) * df["D"].to_numpy(np.float64)
    else:
        _need(df, "overtrain", [compute], "the law's compute")
        C = df[compute].to_numpy(np.float64)
    return np.stack([C, M], 1)


def result_json(res: fit.FitResult, excluded: dict[str, int] | None = None) -> dict[str, Any]:
    """The `testbed fit` JSON for a FitResult (same keys as analysis/report.py's, less data/holdout)."""
    law = res.law
    keep = set(res.params) | set(res.derived)
    return {"law": law.name, "formula": law.formula, "params": res.params,
            "ci": {k: v for k, v in (res.ci or {}).items() if k in keep} or None,
            "derived": res.derived, "diagnostics": res.diagnostics, "n_points": res.n_points,
            "excluded": excluded or dict.fromkeys(load.REASONS, 0)}


def fit_overtrain(df: pd.DataFrame, bootstrap: int = 0, *, seed: int = 0, compute: str = "C_6ND",
                  objective: str = "huber", return_result: bool = False,
                  ) -> dict[str, Any] | tuple[dict[str, Any], fit.FitResult]:
    """Fits OVERTRAIN to the table's usable rows (columns N, D or M, loss); see overtrain_inputs for C.
    objective "lsq": least squares on L, as the authors fitted (analysis/fit.py's LOSS_FUNCTIONS)."""
    rows, excluded = _rows(df)
    _need(rows, "overtrain", ["loss"], "the law's target")
    X = overtrain_inputs(rows, compute)
    law = dataclasses.replace(OVERTRAIN, loss_function=objective)
    res = fit.fit(law, X, rows["loss"].to_numpy(np.float64), bootstrap=bootstrap, seed=seed)
    out = result_json(res, excluded)
    return (out, res) if return_result else out


def fit_downstream(df: pd.DataFrame, bootstrap: int = 0, *, seed: int = 0, err_col: str = "err",
                   objective: str = "huber", return_result: bool = False,
                   ) -> dict[str, Any] | tuple[dict[str, Any], fit.FitResult]:
    """Fits DOWNSTREAM: the error column `err_col` (a fraction in (0, 1), e.g. mean 1 - accuracy) against loss."""
    rows, excluded = _rows(df)
    _need(rows, "downstream", ["loss"], "the law's input")
    if err_col not in rows.columns:
        cols = ", ".join(map(str, rows.columns))
        raise ConfigError(f"fit downstream: the data has no {err_col!r} column (downstream error, a fraction in "
                          f"(0, 1)); add it to the table, or name it (its columns: {cols})")
    err = rows[err_col].to_numpy(np.float64)
    if np.any(~np.isfinite(err)) or np.any((err <= 0) | (err >= 1)):
        raise ConfigError(f"fit downstream: {err_col} must be an error rate strictly between 0 and 1 "
                          "(the fit is in log space); filter out the other rows")
    law = dataclasses.replace(DOWNSTREAM, loss_function=objective)
    res = fit.fit(law, rows[["loss"]].to_numpy(np.float64), err, bootstrap=bootstrap, seed=seed)
    out = result_json(res, excluded)
    return (out, res) if return_result else out


def predict_error(down: dict[str, float], loss: np.ndarray) -> np.ndarray:
    """Err(L) from DOWNSTREAM's natural parameters (eps, k, gamma)."""
    return down["eps"] - down["k"] * np.exp(-down["gamma"] * np.asarray(loss, np.float64))
