"""A Law fitted point by point (chinchilla, chinchilla-vp, kaplan, farseer), as `testbed fit LAW` runs it: usable
rows -> fit (+ bootstrap) -> derived allocations, --predict points and the --holdout check -> JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import fit, intervals, laws, load, tablefits

from testbed.config import ConfigError

# compute budgets at which derived allocations are reported (Chinchilla; C in FLOPs)
REPORT_C = (1e18, 1e20, 1e22, 1e24)


def fit_law(law: laws.Law, X: np.ndarray, y: np.ndarray, bootstrap: int, seed: int,
            pad_to: int | None = None) -> fit.FitResult:
    """The law's fit: variable projection for chinchilla-vp, Farseer's staged starts, else analysis/fit.py.
    pad_to: fits of subsets of one table (a backtest's cuts) reuse one compiled program (analysis/fit.py)."""
    if law.name == "chinchilla-vp":
        from testbed.analysis import vp

        return vp.fit_vp(X, y, bootstrap=bootstrap, seed=seed)
    if law.name == "farseer":
        from testbed.analysis import farseer

        return farseer.fit_farseer(X, y, bootstrap=bootstrap, seed=seed, pad_to=pad_to)
    return fit.fit(law, X, y, bootstrap=bootstrap, seed=seed, pad_to=pad_to)


def _xy(law: laws.Law, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in law.inputs if c not in df.columns]
    if missing:
        raise ConfigError(f"fit {law.name}: the data has no {', '.join(missing)} column; map one with --columns "
                          f"{missing[0]}=COLUMN (the law reads {', '.join(law.inputs)} and loss)")
    return df[list(law.inputs)].to_numpy(np.float64), df["loss"].to_numpy(np.float64)


def _holdout_errors(law: laws.Law, res: fit.FitResult, held: pd.DataFrame) -> dict[str, Any]:
    """Relative error of the fitted law on held-out rows, per point and overall."""
    Xh, yh = _xy(law, held)
    pred = res.predict(Xh)
    rel = (pred - yh) / yh
    return {"n_points": len(yh), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))),
            "points": [{**{c: float(v) for c, v in zip(law.inputs, x, strict=True)}, "loss": float(o),
                        "pred": float(p), "rel_error": float(r)}
                       for x, o, p, r in zip(Xh, yh, pred, rel, strict=True)]}


def _derived_at(law: laws.Law, res: fit.FitResult) -> dict[str, Any]:
    """N_opt, D_opt, tokens per parameter and loss at REPORT_C, with bootstrap percentile CIs when resampled."""
    if law.inputs != laws.CHINCHILLA.inputs or law.raw != laws.CHINCHILLA.raw:
        return {}
    out = {}
    for c in REPORT_C:
        point = {k: float(v) for k, v in laws.chinchilla_optimum(res.params, c).items()}
        if res.boot:
            boot = laws.chinchilla_optimum({k: res.boot[k] for k in res.params}, c)
            point["ci"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items()}
        out[f"C={c:.0e}"] = point
    return out


def parse_points(text: str, inputs: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """--predict 'N=1e9,D=2e10;N=3e9,D=6e10' -> one dict per point, each naming the law's inputs (and, for fit
    auto, optionally the inputs of other laws it may choose: `extra`)."""
    out = []
    for item in text.split(";"):
        try:
            point = {k.strip(): float(v) for k, v in (kv.split("=", 1) for kv in item.split(","))}
        except ValueError:
            point = {}
        if not set(inputs) <= set(point) <= set(inputs) | set(extra):
            also = f" (and optionally {', '.join(f'{k}=VALUE' for k in extra)})" if extra else ""
            raise ConfigError(f"--predict {item!r}: give {', '.join(f'{k}=VALUE' for k in inputs)}{also} per point, "
                              f"points separated by ';' (e.g. --predict \"N=1e9,D=2e10\")")
        out.append(point)
    return out


def point_compute(point: dict[str, float], rows: pd.DataFrame) -> float:
    """A --predict point's compute on the data's scale: 6 N D times the data's median C / (6 N D)."""
    n = point.get("N", point.get("N_nonembed"))
    c6 = 6.0 * n * point["D"]
    if {"C", "C_6ND"} <= set(rows.columns):
        ratio = (rows["C"] / rows["C_6ND"]).to_numpy(float)
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        return c6 * float(np.median(ratio)) if len(ratio) else c6
    return c6


def predictions(law: laws.Law, res: fit.FitResult, points: list[dict[str, float]], rows: pd.DataFrame,
                bt_points: list[dict] | None) -> list[dict]:
    """The law's loss at each point, its bootstrap CI (parameter noise) and, from the law's backtest errors on
    these rows, the prediction interval at the point's extrapolation factor (analysis/backtest.py)."""
    out = []
    c_max = float(rows["C"].max()) if "C" in rows.columns else None
    for point in points:
        X = np.array([[point[k] for k in law.inputs]])
        row = {**point, "loss": float(res.predict(X)[0])}
        if res.boot_raw is not None:
            boot = fit.predict_many(law, res.boot_raw, X)[:, 0]
            row["ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
        if bt_points and c_max:
            row.update(intervals.interval(bt_points, row["loss"], point_compute(point, rows) / c_max, row.get("ci")))
        out.append(row)
    return out


def run(law: laws.Law, data: str | Path, columns: dict[str, str] | None = None, filter: str | None = None,
        bootstrap: int = 0, seed: int = 0, holdout: str | None = None, predict: str | None = None,
        backtest: Callable[[pd.DataFrame], dict] | None = None) -> tuple[dict, dict]:
    """The fit's JSON (law, params, ci, derived, diagnostics, n_points, excluded, holdout) and objects to plot;
    backtest(rows): the law's backtest on the usable rows (analysis/backtest.py), for --predict's intervals."""
    df = load.load(data, columns=columns, filter=filter)
    rows, excluded = load.usable(df)
    bt = None
    if predict and not holdout and backtest is not None:
        parse_points(predict, law.inputs)  # a malformed --predict fails before the backtest's fits
        try:
            bt = backtest(rows)
        except ConfigError as e:  # too few budgets to cut: predictions keep their CI, without an interval
            bt = {"error": str(e), "laws": {}}
    return fit_table(law, rows, excluded, df.attrs, data, filter, bootstrap, seed, holdout, predict, bt)


def fit_table(law: laws.Law, rows: pd.DataFrame, excluded: dict, attrs: dict, data, filter, bootstrap: int,
              seed: int, holdout: str | None, predict: str | None, bt: dict | None, extra: tuple[str, ...] = ()
              ) -> tuple[dict, dict]:
    """`run` on loaded rows; bt: a backtest (analysis/backtest.py) holding this law, for --predict's intervals;
    extra: --predict keys allowed beyond the law's inputs (fit auto's points name every candidate's inputs)."""
    fit_rows, held = rows, None
    if holdout:
        mask = tablefits.holdout_mask(rows, holdout)
        fit_rows, held = rows[~mask].reset_index(drop=True), rows[mask].reset_index(drop=True)
    X, y = _xy(law, fit_rows)
    try:
        res = fit_law(law, X, y, bootstrap, seed, pad_to=fit.pad_size(len(y)))
    except ConfigError as e:
        raise tablefits.noting(e, excluded) from None
    out: dict[str, Any] = {
        "law": law.name, "formula": law.formula, "params": res.params,
        "ci": {k: v for k, v in (res.ci or {}).items() if k in res.params or k in res.derived} or None,
        "derived": {**{k: v for k, v in res.derived.items() if k != "k"}, **_derived_at(law, res)},
        "diagnostics": res.diagnostics, "n_points": res.n_points, "excluded": excluded,
        "data": {"source": str(data), "derived_columns": attrs.get("derived", []), "filter": filter},
    }
    if predict:
        law_bt = (bt or {}).get("laws", {}).get(law.name)
        out["predict"] = predictions(law, res, parse_points(predict, law.inputs, extra), fit_rows,
                                     law_bt["points"] if law_bt else None)
        if law_bt:
            out["pi_method"] = intervals.PI_METHOD
            out["backtest"] = {k: v for k, v in law_bt.items() if k != "points"}
        elif bt is not None and "error" in bt:
            out["pi_note"] = f"no prediction interval: {bt['error']}"
    if held is not None:
        out["holdout"] = {"expr": holdout, **_holdout_errors(law, res, held)}
        if law.name == "farseer":  # the paper's comparison: Chinchilla fitted to the same points, same held-out set
            base = fit_law(laws.CHINCHILLA, X, y, 0, seed)
            out["holdout"]["baseline"] = {"law": "chinchilla", "params": base.params,
                                          "converged": base.diagnostics["converged"],
                                          **_holdout_errors(laws.CHINCHILLA, base, held)}
    return out, {"kind": "law", "law": law, "result": res, "fit_rows": fit_rows, "held": held}
