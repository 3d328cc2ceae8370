"""Rolling-origin backtests of the point laws by compute: fit below a cut, predict the runs above it.

A law that fits its points well can still miss the next 10x: its form, not the noise of its points, is what fails.
The only evidence of that error a user has is the law's own record on the data at hand. Each cut holds out the
largest budgets (the largest one, then the two largest, ...), fits every law on the rest and records, per held-out
run, the relative error and the extrapolation factor C / C_max_fitted. Those errors pick the law (analysis/autofit.py)
and size its prediction interval (analysis/intervals.py): the bootstrap CI covers parameter noise, the backtest
errors add the error of the form at a comparable extrapolation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import fit, laws, pointfit
from testbed.analysis.intervals import LEVEL, interval

from testbed.config import ConfigError

POINT_LAWS = ("chinchilla", "chinchilla-vp", "kaplan", "farseer")
BUDGET_TOL = 0.25  # runs whose compute is within 25% of a budget's smallest run are that budget (IsoFLOP jitter)
# compute spread continuously (runs off any IsoFLOP grid) would give a budget per run and cuts that barely
# extrapolate: the tolerance doubles until there are at most MAX_BUDGETS budgets
MAX_BUDGETS = 12
MAX_CUTS, MIN_BUDGETS = 4, 2  # cuts hold out the 1..MAX_CUTS largest budgets, leaving >= MIN_BUDGETS to fit
CI_Q = (2.5, 97.5)  # the bootstrap CI (parameter noise), as `testbed fit` reports it
NEAR = 0.5  # backtest points within half a decade of the asked factor are "comparable" (law choice)
MIN_NEAR = 5  # ... or the MIN_NEAR nearest ones when fewer are that close
TIE = 0.05  # scores within 5% of the best tie; the law with fewer parameters wins


def point_law(name: str) -> laws.Law:
    """The Law object of a point law's name (the fit registry's chinchilla, chinchilla-vp, kaplan, farseer)."""
    from testbed.analysis import farseer, vp

    table = {**laws.LAWS, vp.LAW.name: vp.LAW, farseer.LAW.name: farseer.LAW}
    if name not in table:
        raise ConfigError(f"--laws: '{name}' is not a law fitted point by point; choose from {', '.join(POINT_LAWS)}")
    return table[name]


def parse_laws(text: str | None) -> tuple[str, ...]:
    """--laws 'chinchilla,farseer' -> the names, checked; None -> every point law."""
    names = tuple(s.strip() for s in (text or "").split(",") if s.strip()) or POINT_LAWS
    for n in names:
        point_law(n)
    return names


def budget_groups(c: np.ndarray, tol: float = BUDGET_TOL) -> np.ndarray:
    """Group index per row (0: the smallest budget): sorted compute values within (1 + tol) of a group's first;
    tol doubles while that leaves more than MAX_BUDGETS groups."""
    groups = _groups(c, tol)
    while len(c) and groups.max() + 1 > MAX_BUDGETS:
        tol *= 2
        groups = _groups(c, tol)
    return groups


def _groups(c: np.ndarray, tol: float) -> np.ndarray:
    order = np.argsort(c)
    groups, start, g = np.empty(len(c), int), None, -1
    for i in order:
        if start is None or c[i] > start * (1 + tol):
            g, start = g + 1, c[i]
        groups[i] = g
    return groups


@dataclass(frozen=True)
class Cut:
    k: int  # how many of the largest budgets are held out
    held: np.ndarray  # bool per row
    c_max_fit: float  # the largest compute fitted


def make_cuts(c: np.ndarray, max_cuts: int = MAX_CUTS, min_budgets: int = MIN_BUDGETS,
              tol: float = BUDGET_TOL) -> list[Cut]:
    """Cut k holds out the k largest budgets, while at least min_budgets stay to fit."""
    g = budget_groups(c, tol)
    nb = int(g.max()) + 1 if len(g) else 0
    out = []
    for k in range(1, max_cuts + 1):
        if nb - k < min_budgets:
            break
        held = g >= nb - k
        out.append(Cut(k, held, float(c[~held].max())))
    return out


def _skip_reason(law: laws.Law, rows: pd.DataFrame) -> str | None:
    missing = [col for col in law.inputs if col not in rows.columns or not rows[col].notna().any()]
    if missing:
        return f"the data has no {', '.join(missing)} column (map one with --columns {missing[0]}=COLUMN)"
    return None


def _points(law: laws.Law, res: fit.FitResult, held: pd.DataFrame, by: str, c_max: float, k: int) -> list[dict]:
    """One record per held-out run: inputs, compute, factor, observed and predicted loss, the bootstrap CI."""
    X = held[list(law.inputs)].to_numpy(np.float64)
    pred = res.predict(X)
    ci = None
    if res.boot_raw is not None and len(res.boot_raw):
        boot = fit.predict_many(law, res.boot_raw, X)
        ci = np.nanpercentile(boot, CI_Q, axis=0).T
    out = []
    for i, (x, obs, p) in enumerate(zip(X, held["loss"].to_numpy(float), pred, strict=True)):
        ok = bool(np.isfinite(p) and p > 0)  # a fit gone astray (NaN, inf): an infinite error, not a crash
        row = {"cut": k, **{col: float(v) for col, v in zip(law.inputs, x, strict=True)},
               "C": float(held[by].iloc[i]), "factor": float(held[by].iloc[i] / c_max), "loss": float(obs),
               "pred": float(p), "rel_error": float(p / obs - 1) if ok else float("inf")}
        if ci is not None:
            row["ci"] = [float(ci[i, 0]), float(ci[i, 1])]
            row["in_ci"] = bool(ci[i, 0] <= obs <= ci[i, 1])
        out.append(row)
    return out


def _law_backtest(name: str, rows: pd.DataFrame, cuts: list[Cut], by: str, bootstrap: int, seed: int) -> dict:
    law = point_law(name)
    rec: dict[str, Any] = {"law": name, "params": len(law.raw), "cuts": [], "points": []}
    for cut in cuts:
        fit_rows, held = rows[~cut.held], rows[cut.held]
        X, y = fit_rows[list(law.inputs)].to_numpy(np.float64), fit_rows["loss"].to_numpy(np.float64)
        t0 = time.perf_counter()
        try:
            res = pointfit.fit_law(law, X, y, bootstrap, seed, pad_to=fit.pad_size(len(rows)))
        except ConfigError as e:  # e.g. too few points below this cut for the law's parameters
            rec["cuts"].append({"k": cut.k, "C_max_fitted": cut.c_max_fit, "n_fit": len(y), "skipped": str(e)})
            continue
        rec["cuts"].append({"k": cut.k, "C_max_fitted": cut.c_max_fit, "n_fit": len(y), "n_held": int(cut.held.sum()),
                            "converged": bool(res.diagnostics["converged"]),
                            "fit_s": round(time.perf_counter() - t0, 2)})
        rec["points"].extend(_points(law, res, held, by, cut.c_max_fit, cut.k))
    rec.update(summarize(rec["points"]))
    return rec


def summarize(points: list[dict]) -> dict:
    """Median and worst |relative error|, bias, CI coverage, and the same per half-decade of extrapolation."""
    if not points:
        return {"n_points": 0}
    rel = np.array([p["rel_error"] for p in points])
    f = np.array([p["factor"] for p in points])
    out: dict[str, Any] = {"n_points": len(points), "median_abs_rel_error": float(np.median(np.abs(rel))),
                           "worst_abs_rel_error": float(np.max(np.abs(rel))), "bias": float(np.median(rel)),
                           "factor_range": [float(f.min()), float(f.max())]}
    with_ci = [p["in_ci"] for p in points if "in_ci" in p]
    if with_ci:  # points whose cut's bootstrap refits all failed have no CI
        out["ci_coverage"] = float(np.mean(with_ci))
    bins = np.floor(2 * np.log10(np.maximum(f, 1.0))).astype(int)  # half-decade bins: [1, 3.2), [3.2, 10), ...
    out["by_factor"] = [{"factor_range": [float(10 ** (b / 2)), float(10 ** ((b + 1) / 2))],
                         "n": int((bins == b).sum()), "median_abs_rel_error": float(np.median(np.abs(rel[bins == b]))),
                         "bias": float(np.median(rel[bins == b]))} for b in np.unique(bins)]
    return out


def loco_coverage(points: list[dict], level: float = LEVEL) -> float | None:
    """Coverage of the prediction interval built for each cut's points from the other cuts' errors only."""
    cuts = sorted({p["cut"] for p in points})
    if len(cuts) < 2:
        return None
    hits = []
    for k in cuts:
        others = [p for p in points if p["cut"] != k]
        for p in (p for p in points if p["cut"] == k):
            lo, hi = interval(others, p["pred"], p["factor"], p.get("ci"), level)["pi"]
            hits.append(lo <= p["loss"] <= hi)
    return float(np.mean(hits))


def backtest(rows: pd.DataFrame, law_names: tuple[str, ...] = POINT_LAWS, by: str = "C", bootstrap: int = 100,
             seed: int = 0, max_cuts: int = MAX_CUTS, min_budgets: int = MIN_BUDGETS, tol: float = BUDGET_TOL,
             level: float = LEVEL, progress=None) -> dict:
    """Every law through every cut: per law the cuts, the points, and their summary (analysis `summarize`)."""
    if by not in rows.columns or not rows[by].notna().all() or (rows[by] <= 0).any():
        raise ConfigError(f"--by {by}: the backtest orders runs by this column, which must be positive on every "
                          f"usable run (map it with --columns {by}=COLUMN, or give N and D so C = 6 N D)")
    c = rows[by].to_numpy(np.float64)
    cuts = make_cuts(c, max_cuts, min_budgets, tol)
    n_budgets = int(budget_groups(c, tol).max()) + 1
    if not cuts:
        raise ConfigError(f"backtest: the data has {n_budgets} compute budget(s) (runs within {tol:.0%} of each "
                          f"other count as one); a cut needs at least {min_budgets + 1} to hold the largest out "
                          "and fit the rest")
    out: dict[str, Any] = {"by": by, "n_points": len(rows), "n_budgets": n_budgets, "level": level,
                           "cuts": [{"k": cut.k, "C_max_fitted": cut.c_max_fit, "n_held": int(cut.held.sum())}
                                    for cut in cuts],
                           "laws": {}, "skipped": {}}
    for name in law_names:
        reason = _skip_reason(point_law(name), rows)
        if reason:
            out["skipped"][name] = reason
            continue
        if progress:
            progress(f"backtest: {name} over {len(cuts)} cuts")
        rec = _law_backtest(name, rows, cuts, by, bootstrap, seed)
        if not rec["points"]:
            out["skipped"][name] = "; ".join(sorted({c["skipped"] for c in rec["cuts"] if "skipped" in c}))
            continue
        rec["pi_coverage_loco"] = loco_coverage(rec["points"], level)
        out["laws"][name] = rec
    return out


def _comparable(points: list[dict], factor: float) -> list[dict]:
    """The backtest points within NEAR decades of factor, or the MIN_NEAR nearest in log factor."""
    d = np.abs(np.log10([p["factor"] for p in points]) - math.log10(max(factor, 1e-300)))
    near = [p for p, di in zip(points, d, strict=True) if di <= NEAR]
    return near if len(near) >= MIN_NEAR else [points[i] for i in np.argsort(d, kind="stable")[:MIN_NEAR]]


def choose(bt: dict, factor: float | None) -> dict:
    """The law with the lowest median |error| at comparable extrapolation (all points when factor is None);
    scores within TIE of the best tie and the law with fewer parameters wins."""
    scores = {}
    for name, rec in bt["laws"].items():
        pts = rec["points"] if factor is None else _comparable(rec["points"], factor)
        scores[name] = float(np.median([abs(p["rel_error"]) for p in pts]))
    if not scores:
        raise ConfigError("fit auto: no law could be backtested on this data (see skipped)")
    best = min(scores.values())
    tied = [n for n, s in scores.items() if s <= best * (1 + TIE)]
    chosen = min(tied, key=lambda n: (bt["laws"][n]["params"], scores[n]))
    return {"chosen": chosen, "factor": factor, "scores": scores,
            "rule": f"lowest median |relative error| of the backtest at extrapolation factors within {NEAR} decades "
                    f"of the one asked (at least {MIN_NEAR} points); within {TIE:.0%} of the best, fewer parameters"}


def format_text(out: dict) -> str:
    """One line per law: median and worst |error|, bias, coverage; then what was skipped."""
    c_max = ", ".join(f"{c['C_max_fitted']:.3g}" for c in out["cuts"])
    lines = [f"backtest by {out['by']}: {out['n_points']} runs, {out['n_budgets']} budgets, {len(out['cuts'])} cuts "
             f"(C_max fitted: {c_max})",
             f"  {'law':14s} {'points':>6s} {'factor':>13s} {'median|err|':>11s} {'worst|err|':>10s} {'bias':>8s} "
             f"{'CI cover':>8s} {'PI cover':>8s}"]
    for name, r in out["laws"].items():
        cov = f"{r['ci_coverage']:.0%}" if "ci_coverage" in r else "-"
        pic = f"{r['pi_coverage_loco']:.0%}" if r.get("pi_coverage_loco") is not None else "-"
        f0, f1 = r["factor_range"]
        lines.append(f"  {name:14s} {r['n_points']:6d} {f'{f0:.2g}-{f1:.2g}x':>13s} {r['median_abs_rel_error']:11.3%} "
                     f"{r['worst_abs_rel_error']:10.3%} {r['bias']:+8.3%} {cov:>8s} {pic:>8s}")
    for name, why in out["skipped"].items():
        lines.append(f"  {name}: skipped, {why}")
    lines.append(f"  CI: bootstrap (parameter noise); PI: {out['level']:.0%} prediction interval built for each cut "
                 "from the other cuts' errors")
    return "\n".join(lines)
