"""Hoffmann et al. (2022) Approaches 1 and 2: compute-optimal N_opt(C), D_opt(C) without a parametric loss law.

Approach 2 (`isoflop_fit`): rows are grouped into isoFLOP budgets; per budget a parabola of loss in log10 N (and one
in log10 D) gives the vertex N_opt (D_opt); power laws N_opt = k_N C^a, D_opt = k_D C^b go through the vertices by
least squares in log10-log10. D_opt is the vertex of its own parabola, not C / (6 N_opt), so it follows the data's
tokens whatever FLOP accounting the budget column uses (with C = 6 N D exactly the two coincide). The vertex is biased
when the grid is off-centre or too wide (Open-Athena 2026), so each budget reports where its vertex lies in the
sampled range (0..1 in log space); a vertex outside the range is dropped, never extrapolated.
Approach 1 (`envelope_fit`): C = 6 N D along every run's curve; at log-spaced compute values covered by >= 2 runs the
run with the lowest interpolated loss gives N_opt(C); D_opt = C / (6 N_opt), so b = 1 - a and k_D = 1 / (6 k_N).
Both return the `testbed fit` JSON shape: law, formula, params, ci, derived, diagnostics, n_points.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from testbed.config import ConfigError

MIN_DISTINCT = 3  # distinct N a parabola needs
OFF_CENTRE = 0.25  # a vertex at position < 0.25 or > 0.75 of the sampled log10 N range is flagged off-centre
LOW_R2 = 0.8  # a parabola explaining less than this is flagged (grid too wide for a parabola, or noise)
MIN_CURVE = 2  # finite eval_loss points a run needs to enter an eval_loss envelope (metric=None)
REPORT_C = (1e18, 1e20, 1e22, 1e24)  # as analysis/pointfit.py: budgets at which allocations are reported
ISO_FORMULA = ("N_opt = k_N * C^a, D_opt = k_D * C^b; N_opt, D_opt: vertices of loss-vs-log10 N and "
               "loss-vs-log10 D parabolas per isoFLOP budget")
ENV_FORMULA = "N_opt = k_N * C^a (lowest loss over runs at C = 6 N D), D_opt = C / (6 N_opt): b = 1 - a"


def _need(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    """A missing input column is a ConfigError saying how to map it."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"{what}: the data has no {', '.join(map(repr, missing))} column; map one with --columns "
                          f"{missing[0]}=COLUMN (it reads {', '.join(cols)}); its columns: "
                          f"{', '.join(map(str, df.columns))}")


def group(c: np.ndarray, tol: float) -> np.ndarray:
    """Budget index per row: sorted compute values within tol (relative) of a group's smallest share it."""
    labels, k, start = np.empty(len(c), int), -1, None
    for i in np.argsort(c, kind="stable"):
        if start is None or c[i] > start * (1 + tol):
            k, start = k + 1, c[i]
        labels[i] = k
    return labels


def _parabola(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares y = c2 x^2 + c1 x + c0 (x centred for conditioning); its vertex and fit quality."""
    m = x.mean()
    c2, c1, c0 = np.polyfit(x - m, y, 2)
    res = y - np.polyval([c2, c1, c0], x - m)
    tot = float(((y - y.mean()) ** 2).sum())
    xv = -c1 / (2 * c2) + m if c2 != 0 else np.nan
    lo, hi = x.min(), x.max()
    return {"vertex": float(xv), "loss": float(c0 - c1 ** 2 / (4 * c2)) if c2 != 0 else np.nan,
            "curvature": float(2 * c2), "r2": 1 - float((res ** 2).sum()) / tot if tot > 0 else np.nan,
            "rmse": float(np.sqrt(np.mean(res ** 2))), "position": float((xv - lo) / (hi - lo))}


def budget(c: float, N: np.ndarray, D: np.ndarray, L: np.ndarray) -> dict[str, Any]:
    """One isoFLOP budget's parabola vertices and flags; reason is None when the budget is usable."""
    out: dict[str, Any] = {"C": float(c), "n_points": int(len(N)), "n_distinct_N": int(np.unique(N).size),
                           "N_range": [float(N.min()), float(N.max())],
                           "span_decades": float(np.log10(N.max() / N.min()))}
    if out["n_distinct_N"] < MIN_DISTINCT:
        return {**out, "used": False, "reason": f"{out['n_distinct_N']} distinct N; a parabola needs {MIN_DISTINCT}"}
    pn, pd_ = _parabola(np.log10(N), L), _parabola(np.log10(D), L)
    out.update(N_opt=10 ** pn["vertex"], D_opt=10 ** pd_["vertex"], loss_opt=pn["loss"], curvature=pn["curvature"],
               curvature_D=pd_["curvature"], r2=pn["r2"], rmse=pn["rmse"], position=pn["position"],
               position_D=pd_["position"])
    out["interior"] = bool(0 <= pn["position"] <= 1 and 0 <= pd_["position"] <= 1)
    out["off_centre"] = bool(not OFF_CENTRE <= pn["position"] <= 1 - OFF_CENTRE)
    reason = None
    if np.ptp(L) <= 1e-12 * np.abs(L).max():
        reason = "every loss is equal: no minimum to locate"
    elif not (pn["curvature"] > 0 and pd_["curvature"] > 0):
        reason = "no minimum (parabola curvature <= 0)"
    elif not out["interior"]:
        reason = f"vertex outside the sampled range (position {pn['position']:.2f} in log10 N; 0..1 is inside)"
    return {**out, "used": reason is None, "reason": reason}


def power(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, prefactor) of y = k c^e by least squares in log10-log10."""
    e, logk = np.polyfit(np.log10(c), np.log10(y), 1)
    return float(e), float(10 ** logk)


def _ci(samples: list[dict[str, float]]) -> dict[str, list[float]]:
    """Percentile 95% intervals, as fit.py's bootstrap reports them."""
    keys = samples[0].keys()
    return {k: [float(np.percentile([s[k] for s in samples], q)) for q in (2.5, 97.5)] for k in keys}


def _at(params: dict[str, float]) -> dict[str, Any]:
    """Allocations at REPORT_C and the two laws as text, from a, k_N, b, k_D."""
    p = params
    out: dict[str, Any] = {"N_opt(C)": f"{p['k_N']:.4g} * C^{p['a']:.4f}",
                           "D_opt(C)": f"{p['k_D']:.4g} * C^{p['b']:.4f}", "a_plus_b": p["a"] + p["b"]}
    for c in REPORT_C:
        n, d = p["k_N"] * c ** p["a"], p["k_D"] * c ** p["b"]
        out[f"C={c:.0e}"] = {"N_opt": n, "D_opt": d, "tokens_per_param": d / n}
    return out


def _boot_diag(bootstrap: int, fails: int, seed: int, t: float, what: str) -> dict[str, Any]:
    """What was resampled and how often a resample could not be fitted, so CIs can be judged."""
    return {"resamples": bootstrap, "failed": fails, "seed": seed, "resampled": what,
            "fit_s": round(time.perf_counter() - t, 3)}


def isoflop_fit(df: pd.DataFrame, *, budget_col: str = "C", bootstrap: int = 0, seed: int = 0,
                budget_rel_tol: float = 0.05) -> dict[str, Any]:
    """Approach 2: parabola vertices per isoFLOP budget, power laws through them, bootstrap within budgets."""
    t0 = time.perf_counter()
    _need(df, ("N", "D", "loss", budget_col), "isoflop")
    x = df[["N", "D", "loss", budget_col]].to_numpy(np.float64)
    keep = np.all(np.isfinite(x) & (x > 0), axis=1)
    N, D, L, C = x[keep].T
    labels = group(C, budget_rel_tol) if len(C) else np.zeros(0, int)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1 if len(C) else 0)]
    cval = [float(np.exp(np.log(C[g]).mean())) for g in groups]  # geometric mean of the budget's compute values
    budgets = [budget(c, N[g], D[g], L[g]) for c, g in zip(cval, groups, strict=True)]
    used = [k for k, b in enumerate(budgets) if b["used"]]
    dropped = [{"C": b["C"], "reason": b["reason"]} for b in budgets if not b["used"]]
    if len(used) < 2:
        why = "; ".join(f"C={d['C']:.3g}: {d['reason']}" for d in dropped[:5]) or "no finite positive rows"
        why += f"; {len(dropped) - 5} more" if len(dropped) > 5 else ""
        raise ConfigError(f"isoflop: {len(used)} of {len(budgets)} budgets ({budget_col} values within "
                          f"{budget_rel_tol:g} relative form one) have an interior parabola vertex; need at least 2 "
                          f"({why}). Each budget needs >= {MIN_DISTINCT} distinct N around its optimum (a looser "
                          "budget_rel_tol merges scattered compute values)")
    cu = np.array([budgets[k]["C"] for k in used])
    a, kN = power(cu, np.array([budgets[k]["N_opt"] for k in used]))
    b, kD = power(cu, np.array([budgets[k]["D_opt"] for k in used]))
    params = {"a": a, "k_N": kN, "b": b, "k_D": kD}
    fitted = [bd for bd in budgets if bd["n_distinct_N"] >= MIN_DISTINCT]
    diag: dict[str, Any] = {"converged": all(bd["used"] for bd in fitted), "budgets_used": len(used),
                            "budgets_dropped": dropped, "budget_col": budget_col, "budget_rel_tol": budget_rel_tol,
                            "x": "log10 N (and log10 D)", "rows_nonfinite_or_nonpositive": int((~keep).sum()),
                            "grid_fit_s": round(time.perf_counter() - t0, 3)}
    warn = []
    if diag["rows_nonfinite_or_nonpositive"]:
        warn.append(f"{diag['rows_nonfinite_or_nonpositive']} rows with a non-finite or non-positive N, D, loss or "
                    f"{budget_col} left out (check --columns, or --filter them)")
    if not diag["converged"]:
        warn.append("budgets with no interior vertex: " + ", ".join(f"C={bd['C']:.3g}" for bd in fitted
                                                                     if not bd["used"])
                    + " (centre each budget's N grid on its optimum)")
    off = [bd for k, bd in enumerate(budgets) if k in used and bd["off_centre"]]
    if off:
        warn.append(f"vertex off-centre (position outside [{OFF_CENTRE}, {1 - OFF_CENTRE}]) at "
                    + ", ".join(f"C={bd['C']:.3g} ({bd['position']:.2f})" for bd in off)
                    + "; Approach 2 is biased by an off-centre grid (Open-Athena 2026)")
    poor = [bd for k, bd in enumerate(budgets) if k in used and not bd["r2"] >= LOW_R2]
    if poor:
        warn.append(f"parabola R^2 < {LOW_R2} at " + ", ".join(f"C={bd['C']:.3g}" for bd in poor)
                    + " (grid too wide for a parabola, or noisy losses)")
    ci = None
    if bootstrap:
        t1, rng, samples, fails = time.perf_counter(), np.random.default_rng(seed), [], 0
        per_budget: dict[int, list[float]] = {k: [] for k in used}
        for _ in range(bootstrap):
            got = []
            for k in used:
                r = rng.choice(groups[k], size=len(groups[k]), replace=True)
                bd = budget(budgets[k]["C"], N[r], D[r], L[r])
                if bd["used"]:
                    got.append((bd["C"], bd["N_opt"], bd["D_opt"]))
                    per_budget[k].append(bd["N_opt"])
            if len(got) < 2:
                fails += 1
                continue
            c, n, d = map(np.array, zip(*got, strict=True))
            (sa, skN), (sb, skD) = power(c, n), power(c, d)
            samples.append({"a": sa, "k_N": skN, "b": sb, "k_D": skD})
        ci = _ci(samples) if samples else None
        for k, v in per_budget.items():
            if v:
                budgets[k]["N_opt_ci"] = [float(np.percentile(v, q)) for q in (2.5, 97.5)]
        diag["bootstrap"] = _boot_diag(bootstrap, fails, seed, t1, "rows within each used budget")
        if fails > 0.01 * bootstrap:
            warn.append(f"{fails} of {bootstrap} bootstrap resamples had < 2 usable budgets; CIs leave them out")
    if warn:
        diag["warning"] = "; ".join(warn)
    return {"law": "isoflop", "formula": ISO_FORMULA, "params": params, "ci": ci,
            "derived": {"budgets": budgets, **_at(params)}, "diagnostics": diag,
            "n_points": int(sum(len(groups[k]) for k in used))}


def _metric(df: pd.DataFrame, metric: str | None) -> str:
    """eval_loss (a fixed set: no batch-to-batch noise) whenever >= 3 model sizes log >= MIN_CURVE finite values of
    it (runs with fewer leave the envelope), else train_loss (or the one asked for)."""
    if metric is not None:
        _need(df, (metric,), "envelope")
        return metric
    if "eval_loss" in df.columns:
        g = df.assign(_f=np.isfinite(df["eval_loss"].to_numpy(float))).groupby("run_id")
        counts, sizes = g["_f"].sum(), g["N"].median()
        if sizes[counts >= MIN_CURVE].nunique() >= 3:
            return "eval_loss"
    if "train_loss" not in df.columns:
        raise ConfigError("envelope: the curves have no train_loss or eval_loss column (with >= "
                          f"{MIN_CURVE} values per run); map one with --columns train_loss=COLUMN")
    return "train_loss"


def _envelope(runs: list[tuple[float, np.ndarray, np.ndarray]], n_bins: int, drop_edge: bool) -> list[dict]:
    """Per log-spaced compute bin covered by >= 2 runs: the lowest interpolated loss and its run's N."""
    start, end = np.array([r[1][0] for r in runs]), np.array([r[1][-1] for r in runs])
    if len(runs) < 2 or np.sort(start)[1] >= np.sort(end)[-2]:
        raise ConfigError("envelope: no compute range is covered by 2 runs' curves; add runs or longer curves")
    grid = np.linspace(np.sort(start)[1], np.sort(end)[-2], n_bins)
    Ns = np.array([r[0] for r in runs])
    bins = []
    for x in grid:
        cov = (start <= x + 1e-12) & (x - 1e-12 <= end)
        if cov.sum() < 2:
            continue
        loss = np.array([np.interp(x, r[1], r[2]) if c else np.inf for r, c in zip(runs, cov, strict=True)])
        w = int(np.argmin(loss))
        edge = bool(Ns[w] <= Ns[cov].min() or Ns[w] >= Ns[cov].max())
        bins.append({"C": float(10 ** x), "N_opt": float(Ns[w]), "D_opt": float(10 ** x / (6 * Ns[w])),
                     "loss_opt": float(loss[w]), "runs_covering": int(cov.sum()), "edge": edge,
                     "used": not (edge and drop_edge)})
    return bins


def _envelope_params(bins: list[dict]) -> dict[str, float]:
    """a, k_N from the used bins' winners; b, k_D follow from D_opt = C / (6 N_opt)."""
    used = [b for b in bins if b["used"]]
    if len(used) < 2 or len({b["N_opt"] for b in used}) < 2:
        raise ConfigError(f"envelope: {len(used)} of {len(bins)} compute bins have a winning run whose N is not the "
                          "smallest or largest covering that compute, won by "
                          f"{len({b['N_opt'] for b in used})} distinct N; need 2 bins won by 2 distinct N "
                          "(add model sizes around the optimum)")
    a, kN = power(np.array([b["C"] for b in used]), np.array([b["N_opt"] for b in used]))
    return {"a": a, "k_N": kN, "b": 1 - a, "k_D": 1 / (6 * kN)}


def envelope_fit(curves_df: pd.DataFrame, *, metric: str | None = None, n_bins: int = 30, bootstrap: int = 0,
                 seed: int = 0, drop_edge: bool = True) -> dict[str, Any]:
    """Approach 1: lowest loss over runs' curves per compute bin -> N_opt(C) power law; bootstrap over runs."""
    t0 = time.perf_counter()
    _need(curves_df, ("run_id", "N", "tokens"), "envelope")
    metric = _metric(curves_df, metric)
    df = curves_df[["run_id", "N", "tokens", metric]].copy()
    vals = df[["N", "tokens", metric]].to_numpy(np.float64)
    df = df[np.all(np.isfinite(vals) & (vals > 0), axis=1)]
    runs = []
    for _, g in df.groupby("run_id", sort=True):
        n = float(g["N"].median())
        g = g.assign(x=np.log10(6 * n * g["tokens"].to_numpy(float))).sort_values("x").drop_duplicates("x")
        if len(g) >= 2:
            runs.append((n, g["x"].to_numpy(), g[metric].to_numpy(float)))
    if np.unique([r[0] for r in runs]).size < 3:
        raise ConfigError(f"envelope: {len(runs)} runs with >= 2 finite {metric} points and "
                          f"{np.unique([r[0] for r in runs]).size} distinct N; need >= 3 model sizes")
    bins = _envelope(runs, n_bins, drop_edge)
    params = _envelope_params(bins)
    winners = sorted({b["N_opt"] for b in bins if b["used"]})
    diag: dict[str, Any] = {"converged": len(winners) >= 3, "metric": metric, "runs": len(runs),
                            "bins_total": len(bins), "bins_used": sum(b["used"] for b in bins),
                            "bins_edge_dropped": sum(b["edge"] and drop_edge for b in bins),
                            "distinct_N_winning": len(winners), "N_winning": winners,
                            "grid_fit_s": round(time.perf_counter() - t0, 3)}
    warn = []
    if len(winners) <= 2:
        warn.append(f"only {len(winners)} distinct N win any compute bin: the envelope is set by the grid of N, "
                    "not resolved (add model sizes between them)")
    ci = None
    if bootstrap:
        t1, rng, samples, fails = time.perf_counter(), np.random.default_rng(seed), [], 0
        for _ in range(bootstrap):
            pick = rng.integers(0, len(runs), len(runs))
            try:
                samples.append(_envelope_params(_envelope([runs[i] for i in np.unique(pick)], n_bins, drop_edge)))
            except ConfigError:
                fails += 1
        ci = _ci(samples) if samples else None
        diag["bootstrap"] = _boot_diag(bootstrap, fails, seed, t1, "runs")
        if fails > 0.01 * bootstrap:
            warn.append(f"{fails} of {bootstrap} bootstrap resamples left < 2 usable bins or 1 winning N; "
                        "CIs leave them out")
    if warn:
        diag["warning"] = "; ".join(warn)
    return {"law": "envelope", "formula": ENV_FORMULA, "params": params, "ci": ci,
            "derived": {"bins": bins, **_at(params)}, "diagnostics": diag, "n_points": int(len(df))}
