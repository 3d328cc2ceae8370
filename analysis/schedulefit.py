"""Which curve law predicts a schedule it never saw? Fit each law on every pair of schedules of one model and
predict the final loss of each other schedule: the check the annealing and multi-power laws exist for. Each
prediction also gets the bar without a law (BASELINE: the mean of the two fitted runs' final losses), since decayed
schedules often end within a percent of each other.

Runs are grouped by `by` (e.g. the seed: each group is one model under several schedules); a run's schedule is
the optim.* settings that differ between runs (annealing.run_labels).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pandas as pd
from testbed.analysis import annealing, multipower

from testbed.config import ConfigError

LAWS = {"annealing": (lambda c, ids: annealing.fit_annealing(c, fit_runs=ids), annealing.predict_runs),
        "multipower": (lambda c, ids: multipower.fit_multipower(c, fit_runs=ids), multipower.predict_runs)}


BASELINE = "no law (mean of the fitted finals)"


def final_losses(c: pd.DataFrame, metric: str) -> dict[str, float]:
    """run_id -> the metric's value at the run's last logged step (the loss a schedule ends at)."""
    last = c[pd.to_numeric(c[metric], errors="coerce").notna()].sort_values("step").groupby("run_id").last()
    return {str(r): float(v) for r, v in last[metric].items()}


def cross_schedule(curves_df: pd.DataFrame, laws: Iterable[str] = tuple(LAWS), by: str | None = "seed",
                   pairs: Iterable[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per (group, law, fitted pair, predicted schedule): the final loss, its prediction and the relative
    error, with the fit's convergence and the parameters it could not pin. pairs: schedule labels to fit on
    (None: every pair)."""
    unknown = sorted(set(laws) - set(LAWS))
    if unknown:
        raise ConfigError(f"laws: unknown {unknown}; choose from {', '.join(LAWS)}")
    if by is not None and by not in curves_df.columns:
        raise ConfigError(f"by: no column {by!r} in the curves (e.g. seed, model.d_model)")
    rows = []
    for key, c in (curves_df.groupby(by, sort=True) if by else [(None, curves_df)]):
        labels, metric = annealing.run_labels(c), annealing.curve_metric(c)
        finals = final_losses(c, metric)
        runs = {labels[str(r)]: str(r) for r in c["run_id"].unique()}
        if len(runs) < 3:
            raise ConfigError(f"{by}={key}: {len(runs)} schedules; fitting two and predicting another needs >= 3")
        todo = itertools.combinations(sorted(runs), 2) if pairs is None else pairs
        for pair in todo:
            missing = [p for p in pair if p not in runs]
            if missing:
                raise ConfigError(f"pairs: no run labelled {missing} (labels: {sorted(runs)})")
            fit_ids = [runs[p] for p in pair]
            others = [r for lab, r in runs.items() if lab not in pair]
            for rid in others:  # the bar a law must clear: no law, the fitted runs' mean final loss
                base = float(np.mean([finals[f] for f in fit_ids]))
                rows.append({"group": key, "law": BASELINE, "fitted": " + ".join(pair), "predicted": labels[rid],
                             "final_loss": finals[rid], "final_pred": base, "final_rel_error": base / finals[rid] - 1,
                             "mean_abs_rel_error": np.nan, "converged": True, "unidentified": "",
                             "metric": metric})
            for law in laws:
                fit_fn, predict = LAWS[law]
                res = fit_fn(c, fit_ids)
                d = res["diagnostics"]
                for rid, p in predict(res, c, others).items():
                    rows.append({"group": key, "law": law, "fitted": " + ".join(pair), "predicted": labels[rid],
                                 "final_loss": p["final_loss"], "final_pred": p["final_pred"],
                                 "final_rel_error": p["final_rel_error"], "mean_abs_rel_error": p["mean_abs_rel_error"],
                                 "converged": d["converged"], "unidentified": ",".join(d.get("unidentified", [])),
                                 "metric": d["metric"]})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per law and fitted pair: the median and worst |final error| over predicted schedules and groups, and the
    share within 1%."""
    a = table.assign(abs_err=table["final_rel_error"].abs())
    return (a.groupby(["law", "fitted"], sort=False)
            .agg(median_abs=("abs_err", "median"), worst_abs=("abs_err", "max"),
                 within_1pct=("abs_err", lambda e: float(np.mean(e <= 0.01))), n=("abs_err", "size"),
                 converged=("converged", "mean"))
            .reset_index())
