"""`testbed plot KIND DATA`: one paper-style figure from a sweep directory or a published table.

Each kind loads what it needs, runs the fit it shows (through analysis/registry.py, so the numbers match `testbed
fit`), draws the figure (analysis/figures.py, or the fit's own figure) and returns a Section: the figure's path,
the fit's JSON, and notes. `testbed report` (analysis/html.py) draws every kind that applies to a sweep through the
same functions; a Fits object shares one fit between kinds (compute and contour both use the Chinchilla fit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import load, registry

from testbed.config import ConfigError


@dataclass
class Section:
    kind: str
    title: str
    figure: Path | None
    fit: dict[str, Any] | None = None  # the `testbed fit` JSON behind the figure (None: no fit)
    notes: list[str] = field(default_factory=list)


@dataclass
class Fits:
    """One source with its options; memoizes registry.run per (law, holdout) so kinds share fits."""
    data: str | Path
    columns: dict[str, str] | None = None
    filter: str | None = None
    bootstrap: int = 200
    seed: int = 0
    holdout: str | None = None
    _memo: dict = field(default_factory=dict)

    def run(self, law: str, holdout: str | None = None, bootstrap: int | None = None) -> tuple[dict, dict]:
        boot = self.bootstrap if bootstrap is None else bootstrap
        key = (law, holdout, boot)
        if key not in self._memo:
            self._memo[key] = registry.run(law, self.data, columns=self.columns, filter=self.filter,
                                           bootstrap=boot, holdout=holdout, seed=self.seed)
        return self._memo[key]

    def default_holdout(self) -> str:
        """The user's --holdout, else the runs at the largest compute: about a fifth of the usable runs, at least one
        (a whole compute level when runs share budgets)."""
        if self.holdout:
            return self.holdout
        rows, _ = load.usable(load.load(self.data, columns=self.columns, filter=self.filter))
        if "C" not in rows.columns or rows["C"].isna().all():
            raise ConfigError("holdout: the data has no compute column C (map one with --columns, or pass --holdout)")
        c = np.sort(rows["C"].to_numpy(np.float64))[::-1]
        k = max(1, len(c) // 5)
        threshold = c[k - 1] * (1 - 1e-9)
        if threshold <= c[-1]:
            raise ConfigError("holdout: every run has the same compute; pass --holdout EXPR")
        return f"C >= {float(threshold)!r}"


def _fig_path(out: Path, kind: str) -> Path:
    return out if out.suffix else out / f"{kind}.png"


def _law_points(res, rows: pd.DataFrame, law) -> list[dict]:
    X = rows[list(law.inputs)].to_numpy(np.float64)
    pred = res.predict(X)
    y = rows["loss"].to_numpy(np.float64)
    return [{**{c: float(v) for c, v in zip(law.inputs, x, strict=True)}, "loss": float(o), "pred": float(p),
             "rel_error": float(p / o - 1)} for x, o, p in zip(X, y, pred, strict=True)]


def curves(fits: Fits, out: Path) -> Section:
    from testbed.analysis import figures

    cur = load.curves(fits.data, columns=fits.columns, filter=fits.filter)
    n_runs = int(cur["run_id"].nunique()) if "run_id" in cur.columns else 0
    path = figures.loss_curves(cur, _fig_path(out, "curves"))
    return Section("curves", "Loss curves and the compute-optimal frontier", path,
                   notes=[f"{n_runs} runs' logged curves; the black line is the lowest loss any run reached at each "
                          "compute (Chinchilla's Approach 1 envelope)"])


def compute(fits: Fits, out: Path) -> Section:
    from testbed.analysis import figures

    js, objs = fits.run("chinchilla")
    path = figures.loss_vs_compute(objs["fit_rows"], objs["result"], _fig_path(out, "compute"))
    return Section("compute", "Loss vs compute with the fitted compute-optimal loss", path, js,
                   ["band: 95% bootstrap percentiles of L*(C); right of the dotted line is extrapolation"])


def contour(fits: Fits, out: Path) -> Section:
    from testbed.analysis import figures

    js, objs = fits.run("chinchilla")
    path = figures.chinchilla_contour(objs["result"].params, _fig_path(out, "contour"), rows=objs["fit_rows"])
    return Section("contour", "Parametric L(N, D) over (compute, N) with the efficient frontier", path, js)


def holdout(fits: Fits, out: Path) -> Section:
    from testbed.analysis import figures

    expr = fits.default_holdout()
    js, objs = fits.run("chinchilla", holdout=expr, bootstrap=0)
    fit_pts = _law_points(objs["result"], objs["fit_rows"], objs["law"])
    h = js["holdout"]
    path = figures.holdout_scatter(fit_pts, h["points"], _fig_path(out, "holdout"),
                                   title=f"Chinchilla fitted without {expr}")
    return Section("holdout", "Predicted vs observed loss on held-out runs", path, js,
                   [f"held out {h['n_points']} run(s) ({expr}): mean |rel error| {h['mean_abs_rel_error']:.2%}, "
                    f"max {h['max_abs_rel_error']:.2%}"])


def backtest(fits: Fits, out: Path) -> Section:
    from testbed.analysis import backtest, fitplots

    rows, _ = load.usable(load.load(fits.data, columns=fits.columns, filter=fits.filter))
    bt = backtest.backtest(rows, bootstrap=min(fits.bootstrap, 100), seed=fits.seed)
    path = _fig_path(out, "backtest")
    path.parent.mkdir(parents=True, exist_ok=True)
    fitplots.plot_backtest(bt, path)
    table = {**bt, "laws": {n: {k: v for k, v in r.items() if k != "points"} for n, r in bt["laws"].items()}}
    return Section("backtest", "Each law's out-of-sample error vs extrapolation (rolling-origin backtest)", path,
                   table, backtest.format_text(bt).splitlines())


def _via_fit(kind: str, law: str, title: str, note: str = "") -> Callable[[Fits, Path], Section]:
    """A kind whose figure is `testbed fit LAW --plot`."""
    def draw(fits: Fits, out: Path) -> Section:
        js, objs = fits.run(law, bootstrap=0 if law == "annealing" else None)
        path = _fig_path(out, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        registry.plot(objs, js, path)
        return Section(kind, title, path, js, [note] if note else [])
    draw.__doc__ = f"{title} (testbed fit {law} --plot)."
    return draw


def transfer(fits: Fits, out: Path) -> Section:
    from testbed.analysis import transfer

    if not Path(fits.data).is_dir():
        raise ConfigError("transfer: needs a sweep directory (run directories over widths and learning rates)")
    rows, _ = load.usable(load.load(fits.data))
    hp, axis = "optim.lr", "model.d_model"
    swept = rows.groupby(axis)[hp].nunique() if {hp, axis} <= set(rows.columns) else pd.Series(dtype=int)
    if int((swept >= 3).sum()) < 2:
        raise ConfigError("transfer: needs runs at 3 or more learning rates for each of 2 or more widths "
                          "(a transfer design); this sweep has "
                          f"{int((swept >= 3).sum())} such width(s)")
    table = transfer.load_runs(fits.data)
    result = transfer.analyze_transfer(table, bootstrap=min(fits.bootstrap, 200), seed=fits.seed)
    path = transfer.plot_transfer(result, table, _fig_path(out, "transfer"))
    return Section("transfer", "Learning-rate transfer across width", path, result,
                   [line for line in transfer.format_report(result).splitlines() if "verdict" in line.lower()][:4])


def _curve_size(cur: pd.DataFrame) -> float | None:
    """The model size whose curves say the most: the most runs, then the most logged steps (longer curves pin the
    law's S1 term), then the largest N; None when every curve has one size (or none)."""
    if "ok" in cur.columns:
        cur = cur[cur["ok"].astype(bool)]  # the runs the fit will use (not diverged ones, not WSD parents)
    if "N" not in cur.columns or cur["N"].nunique() < 2:
        return None
    by_n = cur.groupby("N").agg(runs=("run_id", "nunique"), rows=("run_id", "size"))
    return float(max(by_n.index, key=lambda n: (by_n.at[n, "runs"], by_n.at[n, "rows"], n)))


def schedules(fits: Fits, out: Path) -> Section:
    """The annealing law fits the curves of ONE model size (its L0 and A are properties of the model): in a sweep of
    several sizes, the size with the most runs, then the longest curves (_curve_size); --filter picks another."""
    n = _curve_size(load.curves(fits.data, columns=fits.columns, filter=fits.filter))
    if n is None:
        return _annealing_section(fits, out)
    only = f"N == {n!r}"
    one = Fits(fits.data, columns=fits.columns, filter=f"({fits.filter}) and {only}" if fits.filter else only,
               seed=fits.seed)
    section = _annealing_section(one, out)
    section.notes.insert(0, f"fitted on the runs of N = {n:,.0f} (the size with the most runs, then the longest "
                            "curves); the law's L0 and A belong to one model, so sizes are not pooled")
    return section


_annealing_section = _via_fit("schedules", "annealing", "LR schedules and the annealing law")


def _multipliers(rows: pd.DataFrame) -> pd.Series:
    """Runs per token multiplier M = D / N (to 2 significant digits: a ladder's rungs round D to whole steps)."""
    m = (rows["D"] / rows["N"]).to_numpy(np.float64)
    return pd.Series(np.round(m / 10 ** np.floor(np.log10(m)), 1) * 10 ** np.floor(np.log10(m))).value_counts()


def overtrain(fits: Fits, out: Path) -> Section:
    """Gadre et al.'s over-training law, where the runs lie on lines of constant M = D / N (a ladder design)."""
    rows, _ = load.usable(load.load(fits.data, columns=fits.columns, filter=fits.filter))
    lines = _multipliers(rows) if {"N", "D"} <= set(rows.columns) and len(rows) else pd.Series(dtype=int)
    if int((lines >= 3).sum()) < 2:
        raise ConfigError("overtrain: needs runs on 2 or more token multipliers M = D / N with 3 or more sizes each "
                          f"(a ladder design with several tokens_per_param); this data has {int((lines >= 3).sum())}")
    section = _overtrain_section(fits, out)
    section.notes.append(f"token multipliers M = D/N: {', '.join(f'{m:g}' for m in sorted(lines.index))}; "
                         f"compute-optimal M_opt = {section.fit['derived']['M_opt']:.3g}")
    return section


_overtrain_section = _via_fit("overtrain", "overtrain", "Over-training law")


def plan(fits: Fits, out: Path) -> Section:
    """The rounds of `testbed plan --progressive` (SWEEP_DIR/plan/history.jsonl)."""
    import json

    from testbed.analysis import figures
    from testbed.analysis.design import fmt_width

    path = Path(fits.data) / "plan" / "history.jsonl"
    if not path.is_file():
        raise ConfigError(f"plan: no {path} (it is written by testbed plan SWEEP_DIR --progressive)")
    hist = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not hist:
        raise ConfigError(f"plan: {path} is empty")
    notes = [f"round {h['round']}: {h['runs']} runs, {h['flops_in_sweep']:.3g} FLOPs, estimate {h['estimate']:.4g}, "
             f"width {fmt_width(h['width'], h['target'])}"
             + (f"; planned {len(h['proposals'])} runs ({h['planned_flops']:.3g} FLOPs) predicted to leave "
                f"{fmt_width(h['predicted_width'], h['target'])}" if "proposals" in h else "")
             + (f"; stopped: {h['stop']}" if h.get("stop") else "") for h in hist]
    return Section("plan", "Progressive plan: the target's interval per round", figures.plan_history(hist, out),
                   notes=notes)


# name -> (what it shows, draw). Order = the report's order.
KINDS: dict[str, tuple[str, Callable[[Fits, Path], Section]]] = {
    "curves": ("loss curves vs tokens and compute, coloured by N, with the compute-optimal frontier", curves),
    "compute": ("final loss vs compute with the fitted L*(C) and a bootstrap extrapolation band", compute),
    "isoflop": ("IsoFLOP profiles with parabola vertices and N_opt(C) (Chinchilla Fig. 3)",
                _via_fit("isoflop", "isoflop", "IsoFLOP profiles and N_opt(C)")),
    "envelope": ("Approach 1: the lowest loss per compute and N_opt(C)",
                 _via_fit("envelope", "envelope", "Approach 1: per-compute optima")),
    "contour": ("parametric L(N, D) contours over (compute, N) with the efficient frontier (Chinchilla Fig. 4)",
                contour),
    "holdout": ("predicted vs observed loss on held-out runs (--holdout, default: the largest-compute fifth)",
                holdout),
    "backtest": ("each law's error on runs above a compute cut vs the extrapolation factor, with interval coverage",
                 backtest),
    "transfer": ("loss vs log2 LR per width, one panel per parametrization (muP paper Fig. 1)", transfer),
    "schedules": ("loss curves under several LR schedules with the fitted annealing law, and the LR (one model "
                  "size: in a sweep of several, the one with the most runs, then the longest curves)", schedules),
    "landscape": ("loss over (LR, batch) per (N, D) cell with the fitted optimum (Step Law)",
                  _via_fit("landscape", "steplaw", "Hyperparameter landscape (Step Law)")),
    "critbatch": ("critical batch size per target loss", _via_fit("critbatch", "critbatch", "Critical batch size")),
    "overtrain": ("loss vs compute per token multiplier with the over-training law (Gadre et al.; runs on lines "
                  "of constant D/N)", overtrain),
    "downstream": ("downstream error vs loss with the fitted law", _via_fit("downstream", "downstream",
                                                                           "Loss to downstream error")),
    "plan": ("the target's interval width per round of testbed plan --progressive, with each plan's prediction",
             plan),
}


def summary(section: Section) -> dict:
    """`testbed plot --json`: the figure's path, its notes and the fit behind it."""
    return {"kind": section.kind, "figure": str(section.figure), "notes": section.notes, "fit": section.fit}


def format_section(section: Section) -> str:
    """`testbed plot` as text: the figure written, then its notes."""
    return "\n".join([f"wrote {section.figure}", *(f"  {note}" for note in section.notes)])


def draw(kind: str, fits: Fits, out: str | Path) -> Section:
    if kind not in KINDS:
        raise ConfigError(f"KIND: unknown '{kind}'; choose one of {', '.join(KINDS)}")
    return KINDS[kind][1](fits, Path(out))
