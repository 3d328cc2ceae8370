"""The laws `testbed fit LAW` knows, in one table: name, one-line description, the columns the fit reads, its fit,
its figure and its text. `testbed fit` runs a law through `run`; `testbed plot` and `testbed report`
(analysis/plotkinds.py) draw a fit's figure through `plot`; the CLI's help lists the names and descriptions.

Reading the table imports no numerics: each entry's functions load their modules when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.config import ConfigError

Fit = Callable[..., tuple[dict, dict]]  # (data, columns, filter, bootstrap, seed, holdout, predict) -> (JSON, objects)
Plot = Callable[[dict, dict, "str | Path"], None]  # (objects, JSON, path) -> the figure written to path


@dataclass(frozen=True)
class Entry:
    name: str
    description: str  # one line, for the CLI's help
    needs: tuple[str, ...]  # the standard columns (analysis/load.py) the fit reads; a|b: either
    fit: Fit
    plot: Plot
    format: Callable[[dict], str]  # the fit's JSON as a few lines of text
    point: bool = False  # a Law fitted point by point (analysis/pointfit.py): --predict applies
    holdout: bool = False  # --holdout applies (held-out points, or annealing's held-out curves)
    objective: bool = False  # --objective applies (analysis/fit.py's LOSS_FUNCTIONS)


def _point(name: str) -> Fit:
    """A Law through analysis/pointfit.py (chinchilla and kaplan in analysis/laws.py, chinchilla-vp, farseer);
    --predict's intervals from the law's backtest (analysis/backtest.py)."""
    def fit(data, columns, filter, bootstrap, seed, holdout=None, predict=None):
        from testbed.analysis import backtest, pointfit

        def law_backtest(rows):  # --predict's intervals: from this law's own errors on these rows
            return backtest.backtest(rows, (name,), bootstrap=bootstrap, seed=seed)

        return pointfit.run(backtest.point_law(name), data, columns=columns, filter=filter, bootstrap=bootstrap,
                            seed=seed, holdout=holdout, predict=predict, backtest=law_backtest)
    return fit


def _auto(data, columns, filter, bootstrap, seed, holdout=None, predict=None, laws=None):
    """analysis/autofit.py: the point law with the lowest backtest error, with prediction intervals."""
    from testbed.analysis import autofit

    return autofit.run(data, columns, filter, bootstrap, seed, holdout, predict, laws)


def _table(name: str) -> Fit:
    """analysis/tablefits.py's fit_<name>."""
    def fit(*args, **kw):
        from testbed.analysis import tablefits

        return getattr(tablefits, f"fit_{name}")(*args, **kw)
    return fit


def _figure(name: str) -> Plot:
    """analysis/fitplots.py's plot_<name>."""
    def plot(objs, out, path):
        from testbed.analysis import fitplots

        return getattr(fitplots, f"plot_{name}")(objs, out, path)
    return plot


def _text(out: dict) -> str:
    from testbed.analysis import report

    return report.format_text(out)


def _law(name: str, description: str, needs: tuple[str, ...]) -> Entry:
    return Entry(name, description, needs, _point(name), _figure("law"), _text, point=True, holdout=True)


def _fit(name: str, description: str, needs: tuple[str, ...], figure: str | None = None, **kw) -> Entry:
    return Entry(name, description, needs, _table(name), _figure(figure or name), _text, **kw)


ENTRIES = (
    _law("chinchilla", "L = E + A/N^alpha + B/D^beta (Hoffmann et al. Approach 3: Huber fit from a 4,500-start grid)",
         ("N", "D", "loss")),
    _law("chinchilla-vp", "the Chinchilla law by variable projection (NNLS for E, A, B over alpha, beta)",
         ("N", "D", "loss")),
    _law("kaplan", "L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D on non-embedding N (Kaplan et al. 2020)",
         ("N_nonembed", "D", "loss")),
    _law("farseer", "L(N, D) whose data term's coefficient and exponent vary with N (Farseer, Li et al. 2025)",
         ("N", "D", "loss")),
    Entry("auto", "the point law above with the lowest backtest error at the extrapolation asked for, its "
          "predictions with intervals from that error (testbed backtest)", ("N", "D", "loss"), _auto, _figure("law"),
          _text, point=True, holdout=False),
    _fit("isoflop", "Approach 2: parabola vertices per IsoFLOP budget, N_opt(C) and D_opt(C) power laws",
         ("N", "D", "C", "loss"), figure="optima"),
    _fit("envelope", "Approach 1: the lowest loss per compute over the runs' curves, N_opt(C)",
         ("run_id", "N", "tokens", "eval_loss|train_loss"), figure="optima"),
    _fit("annealing", "the LR-annealing law: whole loss curves from their LR schedules (Tissue et al. 2024)",
         ("run_id", "step", "lr", "eval_loss|train_loss"), holdout=True),
    _fit("multipower", "the multi-power law: whole loss curves under any LR schedule, e.g. fit a constant and a "
         "cosine run, predict WSD cooldowns (Luo et al. 2025)", ("run_id", "step", "lr", "eval_loss|train_loss"),
         holdout=True),
    _fit("overtrain", "L(C, M) over token multipliers M = D/N (Gadre et al. 2024)", ("N", "D", "loss"),
         objective=True),
    _fit("downstream", "downstream error from loss, Err = eps - k exp(-gamma L) (Gadre et al. 2024)",
         ("loss", "err"), objective=True),
    _fit("steplaw", "optimal LR and batch size vs N and D from LR x batch sweeps (Step Law, Li et al. 2025)",
         ("N", "D", "lr", "bs", "loss")),
    _fit("critbatch", "the critical batch size per target loss, B_crit(L) (Kaplan et al. 2020)",
         ("run_id", "step", "bs", "train_loss")),
)
LAWS = {e.name: e for e in ENTRIES}


def names() -> list[str]:
    return list(LAWS)


def get(name: str) -> Entry:
    """The law's entry; ConfigError naming the choices for an unknown one."""
    if name not in LAWS:
        raise ConfigError(f"LAW: unknown '{name}'; choose one of {', '.join(LAWS)}")
    return LAWS[name]


def _listing(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def run(law_name: str, data: str | Path, columns: dict[str, str] | None = None, filter: str | None = None,
        bootstrap: int = 0, holdout: str | None = None, seed: int = 0, predict: str | None = None,
        laws: str | None = None, objective: str = "huber") -> tuple[dict, dict]:
    """`testbed fit LAW DATA`: the fit's JSON (law, params, ci, derived, diagnostics, n_points, excluded, ...) and
    the objects its figure needs (`plot`)."""
    entry = get(law_name)
    kw = {}
    if objective != "huber":
        if not entry.objective:
            raise ConfigError(f"--objective {objective}: only for "
                              f"{_listing([e.name for e in ENTRIES if e.objective])} (the other laws fit Huber on "
                              "log residuals); drop --objective")
        kw["objective"] = objective
    if law_name == "auto":
        out, objs = entry.fit(data, columns, filter, bootstrap, seed, holdout, predict, laws)
        return out, {**objs, "fit": law_name}
    if laws:
        raise ConfigError("--laws: only for fit auto (the laws it chooses from)")
    if not entry.holdout:  # fits through per-budget optima, curves or cells: no points to predict or hold out
        if predict:
            raise ConfigError(f"--predict: only for {_listing([e.name for e in ENTRIES if e.point])}, not {law_name}")
        if holdout:
            raise ConfigError(f"--holdout: not supported for {law_name} (it fits power laws through per-budget "
                              "optima); use chinchilla or kaplan for held-out checks")
    out, objs = entry.fit(data, columns, filter, bootstrap, seed, holdout, predict, **kw)
    return out, {**objs, "fit": law_name}


def plot(objs: dict, out: dict, path: str | Path) -> None:
    """The figure of a fit `run` returned."""
    LAWS[objs["fit"]].plot(objs, out, path)
