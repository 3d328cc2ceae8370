"""Hyperparameter scaling laws: Step Law (Li et al. 2025, "Predictable Scale: Part I", arXiv:2503.04715).

eta_opt(N, D) = a N^alpha D^beta and B_opt(D) = c D^gamma, with N the (non-embedding) parameter count, D training
tokens, eta the peak learning rate and B the global batch in TOKENS (sequences x sequence length). The procedure is
the authors' (step-law/steplaw code/fit_tool.py): group runs into (N, D) cells; keep every run whose final loss is
within `band` (relative, strict: |L / L_min - 1| < band, 0.25% by default) of its cell's best; ordinary least
squares of log eta on (1, log N, log D) and of log B on (1, log D) over the kept runs (natural logs); bootstrap by
resampling the kept runs with replacement. The published constants are the MEAN of the bootstrap coefficients
(reported here under derived, *_boot_mean); params are the OLS point estimate on all kept runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import load

from testbed.config import ConfigError

FORMULA = "eta_opt = a N^alpha D^beta;  B_opt = c D^gamma  (B in tokens, natural-log OLS on near-optimal runs)"
COEF_COLUMNS = ("lr_intercept", "lr_coefN", "lr_coefD", "bs_intercept", "bs_coefD")  # the authors' bootstrap CSV


def natural(coef: pd.Series | dict[str, float]) -> dict[str, float]:
    """Regression coefficients (COEF_COLUMNS) -> the law's parameters a, alpha, beta, c, gamma."""
    return {"a": float(np.exp(coef["lr_intercept"])), "alpha": float(coef["lr_coefN"]),
            "beta": float(coef["lr_coefD"]), "c": float(np.exp(coef["bs_intercept"])),
            "gamma": float(coef["bs_coefD"])}


def summarize_bootstrap(boot: pd.DataFrame) -> dict[str, Any]:
    """The authors' final model (mean of each bootstrap coefficient, then a = exp(mean intercept), c likewise) and
    2.5/97.5 percentiles of a, alpha, beta, c, gamma over the resamples."""
    missing = [c for c in COEF_COLUMNS if c not in boot.columns]
    if missing:
        raise ConfigError(f"bootstrap table: no {', '.join(missing)} column (expected {', '.join(COEF_COLUMNS)})")
    per = pd.DataFrame([natural(r) for _, r in boot[list(COEF_COLUMNS)].iterrows()])
    return {"mean": natural(boot[list(COEF_COLUMNS)].mean()),
            "ci": {k: [float(per[k].quantile(0.025)), float(per[k].quantile(0.975))] for k in per.columns},
            "resamples": len(boot)}


def predict(params: dict[str, float], N, D) -> tuple[np.ndarray, np.ndarray]:
    """(eta_opt, B_opt in tokens) at N, D."""
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params["a"] * N ** params["alpha"] * D ** params["beta"], params["c"] * D ** params["gamma"]


def steplaw_table(df: pd.DataFrame, n_col: str, lr_col: str, bs_col: str, loss_col: str,
           seq_len: float | str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Usable runs with columns N, D, lr, B (tokens), loss; exclusions counted by reason."""
    rows, excluded = load.usable(df) if "ok" in df.columns else (df, dict.fromkeys(load.REASONS, 0))
    need = {n_col: ("parameter count", "n_col"), "D": ("tokens", None), lr_col: ("learning rate", "lr_col"),
            bs_col: ("batch size", "bs_col"), loss_col: ("final loss", "loss_col")}
    if isinstance(seq_len, str):
        need[seq_len] = ("sequence length", "seq_len")
    for col, (what, arg) in need.items():
        if col not in rows.columns:
            how = (f"map one with --columns {col}=COLUMN" if col in load.MAPPABLE else "")
            how += (" or " if how and arg else "") + (f"name the column with {arg}=..." if arg else "")
            raise ConfigError(f"fit steplaw: the data has no {col!r} column ({what}); {how} (its columns: "
                              f"{', '.join(map(str, rows.columns))})")
    scale = rows[seq_len].to_numpy(np.float64) if isinstance(seq_len, str) else float(seq_len or 1.0)
    t = pd.DataFrame({"N": rows[n_col].to_numpy(np.float64), "D": rows["D"].to_numpy(np.float64),
                      "lr": rows[lr_col].to_numpy(np.float64),
                      "B": rows[bs_col].to_numpy(np.float64) * scale, "loss": rows[loss_col].to_numpy(np.float64)})
    good = np.all(np.isfinite(t.to_numpy()) & (t.to_numpy() > 0), axis=1)  # bad lr/B/N/D count with bad losses
    excluded = {**excluded, "nonfinite_or_nonpositive_loss": excluded.get("nonfinite_or_nonpositive_loss", 0)
                + int((~good).sum())}
    return t[good].reset_index(drop=True), excluded


def select_near_optimal(t: pd.DataFrame, band: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept runs, one row per (N, D) cell: runs, kept, best loss, whether the best run's lr / B is at the edge of
    what the cell tried, in which case the cell's true optimum may lie outside the sweep)."""
    best = t.groupby(["N", "D"])["loss"].transform("min")
    kept = t[(t["loss"] / best - 1).abs() < band].reset_index(drop=True)
    cells = []
    for (n, d), g in t.groupby(["N", "D"]):
        b = g.loc[g["loss"].idxmin()]
        cells.append({"N": n, "D": d, "runs": len(g), "kept": int(((g["loss"] / b["loss"] - 1).abs() < band).sum()),
                      "best_loss": float(b["loss"]),
                      "lr_at_edge": bool(g["lr"].nunique() > 1 and b["lr"] in (g["lr"].min(), g["lr"].max())),
                      "B_at_edge": bool(g["B"].nunique() > 1 and b["B"] in (g["B"].min(), g["B"].max()))})
    return kept, pd.DataFrame(cells)


def _designs(kept: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    logN, logD = np.log(kept["N"].to_numpy()), np.log(kept["D"].to_numpy())
    one = np.ones_like(logN)
    return np.stack([one, logN, logD], 1), np.log(kept["lr"].to_numpy()), np.stack([one, logD], 1), \
        np.log(kept["B"].to_numpy())


def _weighted_ols(X: np.ndarray, y: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients [R, P] for R weightings [R, n] at once (normal equations); ok[R]: well-conditioned."""
    XtWX = np.einsum("ri,ip,iq->rpq", W, X, X)
    XtWy = np.einsum("ri,ip,i->rp", W, X, y)
    cond = np.linalg.cond(XtWX)
    ok = np.isfinite(cond) & (cond < 1e12)
    coef = np.full(XtWy.shape, np.nan)
    coef[ok] = np.linalg.solve(XtWX[ok], XtWy[ok][..., None])[..., 0]
    return coef, ok


def fit_steplaw(df: pd.DataFrame, *, lr_col: str = "lr", bs_col: str = "bs", loss_col: str = "loss",
                band: float = 0.0025, bootstrap: int = 0, seed: int = 0, n_col: str = "N",
                seq_len: float | str | None = None) -> dict[str, Any]:
    """Step Law from a table of runs (one row per run: N, D, lr, batch size, final loss).

    bs_col is the batch in tokens unless seq_len is given: a number (tokens per sequence) or a column name, which
    multiplies it (the Step Law CSVs give sequences of 2048 tokens: seq_len=2048). n_col: the parameter count to
    use (Step Law's N is non-embedding: pass "N_nonembed" for testbed sweeps). loss_col: Step Law selects on the
    smoothed final loss ("smooth loss" in their CSV)."""
    if not 0 < band < 1:
        raise ConfigError(f"fit steplaw: band={band} must be a relative loss tolerance in (0, 1), e.g. 0.0025")
    t0 = time.perf_counter()
    t, excluded = steplaw_table(df, n_col, lr_col, bs_col, loss_col, seq_len)
    kept, cells = select_near_optimal(t, band)
    nN, nD = cells["N"].nunique() if len(cells) else 0, cells["D"].nunique() if len(cells) else 0
    if len(cells) < 3 or nN < 2 or nD < 2:
        raise ConfigError(f"fit steplaw: {len(cells)} (N, D) cells ({nN} values of N, {nD} of D); the law needs at "
                          "least 3 cells spanning 2 or more N and 2 or more D (each cell: runs at one N and D with "
                          "different lr and batch size)")
    varied = t.groupby(["N", "D"])["lr"].nunique()
    if int((varied >= 2).sum()) < 3:
        raise ConfigError(f"fit steplaw: only {int((varied >= 2).sum())} (N, D) cells have runs at 2 or more learning "
                          "rates; the near-optimal band needs an lr (and batch) sweep in at least 3 cells")
    Xlr, ylr, Xbs, ybs = _designs(kept)
    if len(kept) < 4 or np.linalg.matrix_rank(Xlr) < 3:
        raise ConfigError(f"fit steplaw: {len(kept)} near-optimal runs whose (N, D) do not determine both "
                          f"exponents (log N and log D collinear); widen --band ({band}) or add cells")
    lr_coef, _ = _weighted_ols(Xlr, ylr, np.ones((1, len(kept))))
    bs_coef, _ = _weighted_ols(Xbs, ybs, np.ones((1, len(kept))))
    coef = dict(zip(COEF_COLUMNS, [*lr_coef[0], *bs_coef[0]], strict=True))

    def r2(X, y, c):
        res = y - X @ c
        return float(1 - res @ res / max(((y - y.mean()) ** 2).sum(), 1e-300)), float(np.sqrt(np.mean(res ** 2)))

    (lr_r2, lr_rms), (bs_r2, bs_rms) = r2(Xlr, ylr, lr_coef[0]), r2(Xbs, ybs, bs_coef[0])
    diag: dict[str, Any] = {
        "converged": True, "band": band, "loss_col": loss_col, "runs": len(t), "runs_kept": len(kept),
        "cells": len(cells), "cells_lr_at_edge": int(cells["lr_at_edge"].sum()),
        "cells_B_at_edge": int(cells["B_at_edge"].sum()),
        "lr_fit": {"r2": lr_r2, "rms_log_residual": lr_rms}, "B_fit": {"r2": bs_r2, "rms_log_residual": bs_rms},
        "per_cell": cells.to_dict("records"), "batch_units": "tokens",
        "grid_fit_s": round(time.perf_counter() - t0, 3),  # (OLS; the key analysis/report.py's text prints)
    }
    out: dict[str, Any] = {"law": "steplaw", "formula": FORMULA, "params": natural(coef), "ci": None,
                           "derived": {}, "diagnostics": diag, "n_points": len(kept), "excluded": excluded}
    if bootstrap:
        t1 = time.perf_counter()
        W = np.random.default_rng(seed).multinomial(len(kept), np.full(len(kept), 1 / len(kept)), size=bootstrap)
        bl, okl = _weighted_ols(Xlr, ylr, W.astype(np.float64))
        bb, okb = _weighted_ols(Xbs, ybs, W.astype(np.float64))
        ok = okl & okb
        boot = pd.DataFrame(np.concatenate([bl[ok], bb[ok]], 1), columns=list(COEF_COLUMNS))
        s = summarize_bootstrap(boot)
        out["ci"] = s["ci"]
        out["derived"] = {f"{k}_boot_mean": v for k, v in s["mean"].items()}
        diag["bootstrap"] = {"resamples": bootstrap, "rank_deficient": int((~ok).sum()), "seed": seed,
                             "over": "near-optimal runs", "fit_s": round(time.perf_counter() - t1, 3)}
    return out
