"""Critical batch size (Kaplan et al. 2020 sec. 5.1; "Unraveling the Mystery of Scaling Laws").

Runs that differ only in batch B (tokens per step) reach a loss L after S steps and E = B S tokens, trading one for
the other along the hyperbola (S / S_min - 1)(E / E_min - 1) = 1, i.e. S = S_min (1 + B_crit / B) with
B_crit = E_min / S_min. Per target loss the fit is ordinary least squares of S on (1, 1/B): S = S_min + E_min / B
is linear in 1/B, so this is exact least squares in S (closed form, not log space). Across targets,
log B_crit = log B* - (1 / alpha_B) log L by least squares. Bootstrap: resample runs (all targets alike).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from testbed.config import ConfigError

FORMULA = "S(L) = S_min (1 + B_crit / B), E_min = B_crit S_min;  B_crit(L) = B* / L^(1/alpha_B)  (B in tokens)"
SMOOTH = 9  # centred moving median (logged steps) applied to train_loss


def _need(df: pd.DataFrame, cols: list[str], batch_col: str) -> None:
    for col in cols:
        if col in df.columns:
            continue
        if col == batch_col:
            how = ("batch size in tokens per step; add it (for a testbed sweep B = train.batch_size * "
                   "data.seq_len) or name another column with batch_col=...")
        else:
            how = f"map one with --columns {col}=COLUMN"
        raise ConfigError(f"fit critbatch: the data has no {col!r} column ({how}); its columns: "
                          f"{', '.join(map(str, df.columns))}")


def _envelopes(df: pd.DataFrame, batch_col: str, metric: str | None) -> tuple[list, str, dict[str, str]]:
    """[(run_id, B, steps, running-min loss)], the metric used, runs dropped with reasons."""
    _need(df, ["run_id", "step", batch_col] + ([metric] if metric else []), batch_col)
    groups = list(df.sort_values(["run_id", "step"]).groupby("run_id", sort=True))
    if metric is None:
        if "eval_loss" in df.columns and all(np.isfinite(g["eval_loss"].to_numpy(float)).sum() >= 3
                                             for _, g in groups):
            metric = "eval_loss"
        else:
            _need(df, ["train_loss"], batch_col)
            metric = "train_loss"
    runs, dropped = [], {}
    for rid, g in groups:
        B = pd.to_numeric(g[batch_col], errors="coerce").to_numpy(float)
        B = B[np.isfinite(B)]
        if not len(B) or B[0] <= 0 or np.ptp(B) > 1e-9 * B[0]:
            dropped[str(rid)] = f"{batch_col} missing, non-positive or not constant"
            continue
        y = pd.Series(g[metric].to_numpy(float), index=g["step"].to_numpy(float))
        if metric == "train_loss":
            y = y.rolling(SMOOTH, center=True, min_periods=1).median()
        y = y[np.isfinite(y.to_numpy()) & np.isfinite(y.index.to_numpy())]
        if len(y) < 2:
            dropped[str(rid)] = f"fewer than 2 finite {metric} values"
            continue
        runs.append((rid, float(B[0]), y.index.to_numpy(float), np.minimum.accumulate(y.to_numpy(float))))
    return runs, metric, dropped


def _crossing(steps: np.ndarray, env: np.ndarray, L: float) -> float:
    """First step at which the enveloped curve reaches L (linear in step); NaN if never or before the first log."""
    i = int(np.argmax(env <= L))
    if env[i] > L or (i == 0 and env[0] < L):
        return np.nan
    if i == 0:
        return float(steps[0])
    return float(steps[i - 1] + (env[i - 1] - L) / (env[i - 1] - env[i]) * (steps[i] - steps[i - 1]))


def _hyperbola(B: np.ndarray, S: np.ndarray) -> tuple[float, float, float]:
    """(S_min, E_min, R^2 in S) from OLS of S on (1, 1/B)."""
    X = np.stack([np.ones_like(B), 1 / B], 1)
    coef, *_ = np.linalg.lstsq(X, S, rcond=None)
    res = S - X @ coef
    return float(coef[0]), float(coef[1]), float(1 - res @ res / max(((S - S.mean()) ** 2).sum(), 1e-300))


def _fit(B: np.ndarray, S: np.ndarray, targets: np.ndarray, idx: np.ndarray) -> tuple[list[dict], dict[str, float]]:
    """Per-target rows and the cross-target law for the runs idx (rows of S[run, target])."""
    Bi, rows = B[idx], []
    lo, hi = Bi.min(), Bi.max()
    for j, L in enumerate(targets):
        ok = np.isfinite(S[idx, j])
        row: dict[str, Any] = {"L": float(L), "n_runs": int(ok.sum()), "n_batch": int(len(np.unique(Bi[ok])))}
        if row["n_batch"] < 3:
            rows.append({**row, "used": False, "reason": "fewer than 3 batch sizes reach it"})
            continue
        s_min, e_min, r2 = _hyperbola(Bi[ok], S[idx, j][ok])
        b_crit = e_min / s_min if s_min > 0 and e_min > 0 else np.nan
        row.update(S_min=s_min, E_min=e_min, B_crit=b_crit, r2=r2, interior=bool(lo <= b_crit <= hi))
        reason = ("S_min or E_min not positive" if not np.isfinite(b_crit)
                  else None if row["interior"] else "B_crit outside the sampled batch range")
        rows.append({**row, "used": reason is None, "reason": reason})
    use = [r for r in rows if r["used"]]
    if len(use) < 2:  # fall back on every positive fit, extrapolated B_crit included
        use = [r for r in rows if np.isfinite(r.get("B_crit", np.nan))]
    if len(use) < 2:
        return rows, {"B_star": np.nan, "alpha_B": np.nan}
    x, y = np.log([r["L"] for r in use]), np.log([r["B_crit"] for r in use])
    slope, icpt = np.polyfit(x, y, 1)
    return rows, {"B_star": float(np.exp(icpt)), "alpha_B": float(-1 / slope) if slope else np.nan}


def fit_critical_batch(curves_df: pd.DataFrame, *, batch_col: str = "B", metric: str | None = None,
                       targets=None, n_targets: int = 8, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """Critical batch B_crit(L) = B* / L^(1/alpha_B) from per-step curves (load.curves) of runs differing in batch.

    batch_col: batch in tokens per step. metric: eval_loss when every run logs >= 3 finite values, else
    train_loss smoothed by a centred moving median of 9 logged steps. targets: losses to evaluate; default
    n_targets values log-spaced strictly inside (the highest loss every run reaches, the lowest loss reached at
    3 or more batch sizes)."""
    t0 = time.perf_counter()
    runs, metric, dropped_runs = _envelopes(curves_df, batch_col, metric)
    nB = len({b for _, b, _, _ in runs})
    if nB < 3:
        raise ConfigError(f"fit critbatch: {nB} distinct batch sizes ({batch_col}) among {len(runs)} usable runs; "
                          "the hyperbola S = S_min (1 + B_crit / B) needs runs at 3 or more batch sizes")
    per_b: dict[float, float] = {}
    for _, b, _, env in runs:
        per_b[b] = min(per_b.get(b, np.inf), float(env[-1]))
    hi, lo = min(float(env[0]) for *_, env in runs), sorted(per_b.values())[2]
    if targets is None:
        if not lo < hi:
            raise ConfigError(f"fit critbatch: no common loss range: the highest {metric} every run reaches "
                              f"({hi:.4g}) is below the lowest 3 batch sizes reach ({lo:.4g}); train longer")
        targets = np.geomspace(hi, lo, n_targets + 2)[1:-1]
    targets = np.sort(np.asarray(targets, np.float64))[::-1]
    B = np.array([b for _, b, _, _ in runs])
    S = np.array([[_crossing(st, env, L) for L in targets] for _, _, st, env in runs]).reshape(len(runs), -1)
    rows, params = _fit(B, S, targets, np.arange(len(runs)))
    fitted = [r for r in rows if np.isfinite(r.get("B_crit", np.nan))]
    interior = [r for r in fitted if r["interior"]]
    diag: dict[str, Any] = {
        "converged": len(interior) >= 2 and np.isfinite(params["alpha_B"]), "metric": metric,
        "smoothing": f"centred moving median of {SMOOTH} logged steps" if metric == "train_loss" else None,
        "method": "per target: OLS of S on 1/B (least squares in S); across targets: OLS of log B_crit on log L",
        "runs": len(runs), "runs_dropped": dropped_runs, "batch_sizes": sorted(per_b), "batch_units": "tokens",
        "loss_range": [lo, hi], "targets_used": [r["L"] for r in rows if r["used"]],
        "targets_dropped": {f"{r['L']:.6g}": r["reason"] for r in rows if not r["used"]},
        "cross_fit_on": "interior targets" if len(interior) >= 2 else "all positive targets (extrapolated)",
    }
    if fitted and len(interior) <= len(fitted) / 2:
        diag["warning"] = (f"B_crit lies outside the sampled batch range ({min(per_b):.3g}..{max(per_b):.3g} "
                           f"tokens) for {len(fitted) - len(interior)} of {len(fitted)} targets; widen the sweep")
    if len(interior) >= 2:
        x, y = np.log([r["L"] for r in interior]), np.log([r["B_crit"] for r in interior])
        res = y - (np.log(params["B_star"]) - x / params["alpha_B"])
        diag["cross_fit"] = {"r2": float(1 - res @ res / max(((y - y.mean()) ** 2).sum(), 1e-300)),
                             "rms_log_residual": float(np.sqrt(np.mean(res ** 2)))}
    out: dict[str, Any] = {"law": "critbatch", "formula": FORMULA, "params": params, "ci": None,
                           "derived": {"targets": rows}, "diagnostics": diag, "n_points": len(fitted)}
    if bootstrap:
        t1, rng = time.perf_counter(), np.random.default_rng(seed)
        draws = {"B_star": [], "alpha_B": []}
        per_t = np.full((bootstrap, len(targets)), np.nan)
        for k in range(bootstrap):
            brows, bp = _fit(B, S, targets, rng.integers(0, len(runs), len(runs)))
            for key in draws:
                draws[key].append(bp[key])
            per_t[k] = [r.get("B_crit", np.nan) for r in brows]
        arr = {k: np.array(v) for k, v in draws.items()}
        fin = np.isfinite(arr["alpha_B"]) & np.isfinite(arr["B_star"])
        out["ci"] = {k: [float(np.percentile(v[fin], 2.5)), float(np.percentile(v[fin], 97.5))] if fin.any()
                     else [np.nan, np.nan] for k, v in arr.items()}
        for j, r in enumerate(rows):
            col = per_t[:, j][np.isfinite(per_t[:, j])]
            r["B_crit_ci"] = [float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5))] if len(col) else None
        diag["bootstrap"] = {"resamples": bootstrap, "failed": int((~fin).sum()), "seed": seed, "over": "runs",
                             "fit_s": round(time.perf_counter() - t1, 3)}
    diag["fit_s"] = round(time.perf_counter() - t0, 3)
    return out
