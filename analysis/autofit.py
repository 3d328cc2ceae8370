"""`testbed fit auto`: backtest every point law on the data, fit the one with the lowest out-of-sample error at the
extrapolation asked for, and give its predictions intervals sized by that record (analysis/backtest.py).

`evaluate` checks the whole procedure the honest way: at each cut it runs `auto` on the runs below the cut only
(its own inner backtest, choice and intervals) and scores the predictions of the runs above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import backtest, intervals, load, pointfit, tablefits

from testbed.config import ConfigError

EXTRA = ("N", "D", "N_nonembed")  # --predict keys fit auto accepts: the inputs of every law it may choose


def _factor(points: list[dict], rows: pd.DataFrame) -> float | None:
    """The largest extrapolation factor among the --predict points (None: no points)."""
    if not points or "C" not in rows.columns:
        return None
    return max(pointfit.point_compute(p, rows) for p in points) / float(rows["C"].max())


def auto_rows(rows: pd.DataFrame, excluded: dict, attrs: dict, data, filter, bootstrap: int, seed: int,
              predict: str | None, law_names: tuple[str, ...] = backtest.POINT_LAWS, progress=None
              ) -> tuple[dict, dict]:
    """`fit auto` on loaded rows: backtest, choose, fit the chosen law, predict with intervals."""
    bt = backtest.backtest(rows, law_names, bootstrap=bootstrap, seed=seed, progress=progress)
    points = pointfit.parse_points(predict, ("N", "D"), EXTRA) if predict else []
    if points:  # a law whose inputs the points lack cannot predict them: it does not take part in the choice
        for name in list(bt["laws"]):
            inputs = backtest.point_law(name).inputs
            if any(not set(inputs) <= set(p) for p in points):
                bt["skipped"][name] = (f"--predict points lack {', '.join(sorted(set(inputs) - set(points[0])))}, "
                                       "which this law reads")
                del bt["laws"][name]
    choice = backtest.choose(bt, _factor(points, rows))
    law = backtest.point_law(choice["chosen"])
    out, objs = pointfit.fit_table(law, rows, excluded, attrs, data, filter, bootstrap, seed, None, predict, bt,
                                   EXTRA)
    table = {n: {k: v for k, v in rec.items() if k != "points"} for n, rec in bt["laws"].items()}
    out = {"law": "auto", "chosen": choice["chosen"], "choice": choice,
           "backtest": {**{k: v for k, v in bt.items() if k != "laws"}, "laws": table}, "fit": out,
           **{k: out[k] for k in ("predict", "pi_method") if k in out},
           "formula": out["formula"], "params": out["params"], "ci": out["ci"], "derived": out["derived"],
           "diagnostics": out["diagnostics"], "n_points": out["n_points"], "excluded": excluded}
    return out, {**objs, "backtest": bt}


def run(data: str | Path, columns: dict[str, str] | None = None, filter: str | None = None, bootstrap: int = 0,
        seed: int = 0, holdout: str | None = None, predict: str | None = None, laws: str | None = None
        ) -> tuple[dict, dict]:
    """`testbed fit auto DATA [--predict ...] [--laws ...]`: the chosen law's fit JSON plus `chosen`, `choice`
    and the backtest table; --predict rows carry `ci` (parameter noise) and `pi` (with the error of the form)."""
    if holdout:
        raise ConfigError("--holdout: fit auto chooses its law by its own backtest (held-out budgets); use "
                          "testbed backtest DATA to see every law's out-of-sample errors")
    df = load.load(data, columns=columns, filter=filter)
    rows, excluded = load.usable(df)
    try:
        return auto_rows(rows, excluded, df.attrs, data, filter, bootstrap, seed, predict, backtest.parse_laws(laws))
    except ConfigError as e:
        raise tablefits.noting(e, excluded) from None


def evaluate(rows: pd.DataFrame, law_names: tuple[str, ...] = backtest.POINT_LAWS, bootstrap: int = 0,
             seed: int = 0, outer_cuts: int = 3, progress=None) -> dict:
    """The procedure scored out of sample: at each outer cut, `auto` sees only the runs below it (its inner backtest
    picks the law and sizes the intervals) and predicts every run above it. Coverage: the share of those runs
    inside their interval."""
    c = rows["C"].to_numpy(np.float64)
    cuts = backtest.make_cuts(c, outer_cuts, min_budgets=backtest.MIN_BUDGETS + 2)
    if not cuts:
        raise ConfigError("evaluate: too few compute budgets for an outer cut with an inner backtest below it")
    per_cut, hits, errs = [], [], []
    for cut in cuts:
        inner, held = rows[~cut.held].reset_index(drop=True), rows[cut.held].reset_index(drop=True)
        keys = [k for k in EXTRA if k in held.columns and held[k].notna().all()]
        spec = ";".join(",".join(f"{k}={v!r}" for k, v in zip(keys, vals, strict=True))
                        for vals in held[keys].itertuples(index=False))
        out, objs = auto_rows(inner, {}, {}, "", None, bootstrap, seed, spec, law_names, progress)
        rec: dict[str, Any] = {"k": cut.k, "C_max_fitted": cut.c_max_fit, "chosen": out["chosen"], "points": [],
                               "inner_points": objs["backtest"]["laws"][out["chosen"]]["points"]}
        for p, obs, cc in zip(out["predict"], held["loss"], held["C"], strict=True):
            lo, hi = p.get("pi", [np.nan, np.nan])
            rel = p["loss"] / obs - 1
            rec["points"].append({"N": p["N"], "D": p["D"], "C": float(cc), "factor": float(cc / cut.c_max_fit),
                                  "loss": float(obs), "pred": p["loss"], "rel_error": float(rel), "pi": [lo, hi],
                                  "in_pi": bool(lo <= obs <= hi)})
            hits.append(lo <= obs <= hi)
            errs.append(abs(rel))
        per_cut.append(rec)
    return {"level": intervals.LEVEL, "cuts": per_cut, "n_points": len(hits), "pi_coverage": float(np.mean(hits)),
            "median_abs_rel_error": float(np.median(errs)), "worst_abs_rel_error": float(np.max(errs))}
