"""The fits over a run table or its curves (not one Law through analysis/fit.py), as `testbed fit LAW` runs them:
isoflop, envelope, annealing, multipower, overtrain, downstream, steplaw, critbatch. Each loads its rows (or
curves), leaves out unusable runs, fits, and returns (the fit's JSON with the runs excluded, the objects its figure
needs).

Every fit_* takes (data, columns, filter, bootstrap, seed, holdout, predict); analysis/registry.py lists them and
refuses --predict/--holdout for those that cannot use them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from testbed.analysis import load

from testbed.config import ConfigError


def usable_curves(data, columns, filter) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-step curves of the runs fits may use, and the runs left out by reason (a curves file: none)."""
    cur = load.curves(data, columns=columns, filter=filter)
    if "ok" not in cur.columns:
        return cur, dict.fromkeys(load.REASONS, 0)
    return cur[cur["ok"].astype(bool)].copy(), load.usable(cur.drop_duplicates("run_id"))[1]


def noting(e: ConfigError, excluded: dict[str, int]) -> ConfigError:
    """A fit's refusal (e.g. too few points) with the runs left out before fitting, and why."""
    note = load.describe_exclusions(excluded)
    return ConfigError(f"{e}; {note} before fitting") if note else e


def holdout_mask(df: pd.DataFrame, expr: str) -> np.ndarray:
    """--holdout EXPR: the rows it selects; it must leave some to fit and some to predict."""
    try:
        mask = df.eval(expr)
    except Exception as e:  # pandas raises many types for a bad expression
        raise ConfigError(f"--holdout {expr!r}: cannot evaluate ({type(e).__name__}: {e}); e.g. --holdout "
                          "\"C > 1e21\"; " + load.FILTER_HELP) from None
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ConfigError(f"--holdout {expr!r}: selects {int(mask.sum())} of {len(mask)} points; it must leave "
                          "some to fit and some to predict")
    return mask


def fit_isoflop(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """Approach 2 on one row per run; budgets from the exact FLOPs C (or a mapped budget column)."""
    from testbed.analysis import isoflop

    rows, excluded = load.usable(load.load(data, columns=columns, filter=filter))
    try:
        out = isoflop.isoflop_fit(rows, bootstrap=bootstrap, seed=seed)
    except ConfigError as e:
        raise noting(e, excluded) from None
    return {**out, "excluded": excluded}, {"kind": "isoflop", "rows": rows}


def fit_envelope(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """Approach 1 on full curves: runs that did not complete are left out."""
    from testbed.analysis import isoflop

    cur, excluded = usable_curves(data, columns, filter)
    out = isoflop.envelope_fit(cur, bootstrap=bootstrap, seed=seed)
    return {**out, "excluded": excluded}, {"kind": "envelope", "curves": cur}


def _curve_law(name: str, module, data, columns, filter, bootstrap, holdout) -> tuple[dict, dict]:
    """A curve law (annealing, multipower) on full curves; --holdout selects runs whose curves are predicted."""
    from testbed.analysis import annealing

    if bootstrap:
        raise ConfigError(f"--bootstrap: not available for {name} yet (consecutive steps of one curve are not "
                          "independent points); use --holdout to check it on other runs' curves")
    cur, excluded = usable_curves(data, columns, filter)
    held: list[str] = []
    if holdout:
        held = sorted(set(cur.loc[holdout_mask(cur, holdout), "run_id"]))
    fit_ids = sorted(set(cur["run_id"]) - set(held))
    try:
        out = getattr(module, f"fit_{name}")(cur, fit_runs=fit_ids)
    except ConfigError as e:
        raise noting(e, excluded) from None
    if held:
        pred = module.predict_runs(out, cur, held)
        labels = annealing.run_labels(cur)
        pred = {rid: {"label": labels.get(str(rid), str(rid)), **p} for rid, p in pred.items()}
        out["holdout"] = {"expr": holdout, "runs": pred,
                          "mean_abs_rel_error": float(np.mean([p["mean_abs_rel_error"] for p in pred.values()])),
                          "max_abs_final_rel_error": float(max(abs(p["final_rel_error"]) for p in pred.values()))}
    return {**out, "excluded": excluded}, {"kind": name, "curves": cur, "held": held}


def fit_annealing(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """The LR-annealing law on full curves (analysis/annealing.py)."""
    from testbed.analysis import annealing

    return _curve_law("annealing", annealing, data, columns, filter, bootstrap, holdout)


def fit_multipower(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """The multi-power law on full curves (analysis/multipower.py)."""
    from testbed.analysis import multipower

    return _curve_law("multipower", multipower, data, columns, filter, bootstrap, holdout)


def fit_overtrain(data, columns, filter, bootstrap, seed, holdout=None, predict=None,
                  objective="huber") -> tuple[dict, dict]:
    """Gadre et al.'s L(C, M), M = D / N, C = 6ND."""
    from testbed.analysis import overtrain

    rows, excluded = load.usable(load.load(data, columns=columns, filter=filter))
    out = overtrain.fit_overtrain(rows, bootstrap, seed=seed, objective=objective)
    return {**out, "excluded": excluded}, {"kind": "overtrain", "rows": rows}


def fit_downstream(data, columns, filter, bootstrap, seed, holdout=None, predict=None,
               objective="huber") -> tuple[dict, dict]:
    """Err = eps - k exp(-gamma L): needs an `err` column (--columns err=COL)."""
    from testbed.analysis import overtrain

    rows, excluded = load.usable(load.load(data, columns=columns, filter=filter))
    out = overtrain.fit_downstream(rows, bootstrap, seed=seed, objective=objective)
    return {**out, "excluded": excluded}, {"kind": "downstream", "rows": rows}


def fit_steplaw(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """Step Law on the near-optimal band; a sweep's lr, batch (sequences x seq_len) and non-embedding N."""
    from testbed.analysis import hplaws

    rows, excluded = load.usable(load.load(data, columns=columns, filter=filter))
    if "optim.lr" in rows.columns:  # a testbed sweep directory
        kw = {"lr_col": "optim.lr", "bs_col": "train.batch_size", "seq_len": "data.seq_len", "n_col": "N_nonembed"}
    else:
        kw = {"lr_col": "lr", "bs_col": "bs", "n_col": "N", **({"seq_len": "seq_len"} if "seq_len" in rows.columns
                                                                 else {})}
    out = hplaws.fit_steplaw(rows, bootstrap=bootstrap, seed=seed, **kw)
    table = hplaws.steplaw_table(rows, kw["n_col"], kw["lr_col"], kw["bs_col"], "loss", kw.get("seq_len"))[0]
    return {**out, "excluded": excluded}, {"kind": "steplaw", "table": table}


def fit_critbatch(data, columns, filter, bootstrap, seed, holdout=None, predict=None) -> tuple[dict, dict]:
    """Critical batch size from curves of runs at several batch sizes (tokens: batch x seq_len, or a bs column)."""
    from testbed.analysis import critbatch

    cur, excluded = usable_curves(data, columns, filter)
    if {"train.batch_size", "data.seq_len"} <= set(cur.columns):
        cur["B"] = cur["train.batch_size"] * cur["data.seq_len"]
        col = "B"
    else:
        col = "bs"
    out = critbatch.fit_critical_batch(cur, batch_col=col, bootstrap=bootstrap, seed=seed)
    return {**out, "excluded": excluded}, {"kind": "critbatch"}
