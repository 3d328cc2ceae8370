"""The LR-annealing law (Tissue et al. 2024): a whole loss curve from its LR schedule.

    L(s) = L0 + A * S1(s)^-alpha - C * S2(s)

S1 (forward area) is the sum of the LR over updates 1..s, warmup counted at the peak LR; S2 (annealing area) is
the sum of the momentum m_i = lam * m_(i-1) + (eta_(i-1) - eta_i). The LR is the one applied (peak LR times the
schedule's factor, as logged), so A and C are in those units. Fitted on one or two full curves, the law predicts
the curve of any other schedule: `predict_curve` for an LR sequence, `predict_runs` for logged runs.

Alignment with the logs (testbed/train.py): logged step k's `lr` is update k's LR; its `eval_loss` is measured
after update k, its `train_loss` on the batch of update k, i.e. after k - 1 updates. Steps not logged get their
LR by linear interpolation between logged steps (exact for constant and linear pieces).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.signal import lfilter
from testbed.analysis import fit
from testbed.analysis.laws import Law

from testbed.config import ConfigError

LAMS = (0.99, 0.995, 0.999, 0.9995)  # lam=None: the grid searched, the lowest objective wins
# what pins the S1 term's parameters when a curve law's fit cannot (Law.pin; analysis/multipower.py shares it)
S1_TERM_PIN = "longer curves: L0, A and alpha trade off until the S1 term flattens (more updates at a high LR)"
FLOOR = 1e-9  # the predictor floors L here: log L stays finite where a start's parameters make L <= 0


def areas(lr: np.ndarray, lam: float = 0.999, warmup_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each update of the LR sequence lr (lr[i] is update i + 1's LR; S1[i] sums lr[0..i]).

    The first warmup_steps updates count at the peak LR ("warmup counted at peak"; the peak is the
    highest LR through the end of warmup), for S1 and for the momentum alike, so warmup adds no negative S2.
    """
    eta = np.array(lr, dtype=np.float64).ravel()
    if warmup_steps > 0 and eta.size:
        eta[:warmup_steps] = eta[: warmup_steps + 1].max()
    s1 = np.cumsum(eta)
    drop = np.zeros_like(eta)
    drop[1:] = eta[:-1] - eta[1:]  # eta_(i-1) - eta_i; the first update has no predecessor (m_0 = 0)
    # m_i = lam * m_(i-1) + drop_i is exactly the first-order IIR filter 1 / (1 - lam z^-1): lfilter runs it in C
    m = lfilter([1.0], [1.0, -lam], drop)
    return s1, np.cumsum(m)


def _log_predict(theta, X):
    """log L with L = L0 + A S1^-alpha - C S2 floored at FLOOR (jnp.maximum: a start whose L <= 0 everywhere
    has zero gradient and stays put; the grid's other starts carry the fit; at the optimum L > 0 and the floor
    is inactive)."""
    L0, log_a, alpha, c = theta[0], theta[1], theta[2], theta[3]
    L = L0 + jnp.exp(log_a - alpha * jnp.log(X[:, 0])) - c * X[:, 1]
    return jnp.log(jnp.maximum(L, FLOOR))


ANNEALING = Law(
    name="annealing",
    formula="L(s) = L0 + A * S1^-alpha - C * S2  (S1 = sum of LR, S2 = sum of LR-drop momentum, lam)",
    inputs=("S1", "S2"),
    raw=("L0", "log_A", "alpha", "C"),
    # a generic grid; fit_annealing builds its starts from the data (_starts)
    grid={"L0": (1.0, 2.0, 3.0), "log_A": (-2.0, 0.0, 2.0), "alpha": (0.2, 0.5, 1.0), "C": (0.0, 0.5, 2.0)},
    log_predict=_log_predict,
    natural=lambda p: {"L0": p["L0"], "A": float(np.exp(p["log_A"])), "alpha": p["alpha"], "C": p["C"]},
    bounds={"L0": (0.0, np.inf), "alpha": (0.0, 3.0), "C": (0.0, np.inf)},  # outside: listed in at_bound
    positive=("S1",),  # S2 is 0 until the LR first drops
    pin=dict.fromkeys(("L0", "log_A", "alpha"), S1_TERM_PIN)
    | {"C": "a run whose LR decays (a cosine or a WSD cooldown) among the fitted curves: its drop sets C"},
)


def _starts(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """4 x 3 x 3 x 3 starts: L0 at fractions of the lowest loss, alpha in {0.2, 0.5, 1}, A putting the S1 term
    at e^{-1, 0, 1} x (median - min loss) at the median S1, C in {0, 0.5, 2} x (that span / max |S2|)."""
    lo, span = float(y.min()), max(float(np.median(y) - y.min()), 1e-3 * float(y.min()))
    s1_med, scale = float(np.median(X[:, 0])), span / max(float(np.abs(X[:, 1]).max()), 1e-12)
    return np.array([[lo * f, np.log(span) + alpha * np.log(s1_med) + k, alpha, c * scale]
                     for f, alpha, k, c in itertools.product((0.5, 0.8, 0.95, 1.0), (0.2, 0.5, 1.0),
                                                             (-1.0, 0.0, 1.0), (0.0, 0.5, 2.0))])


def _fit(X: np.ndarray, y: np.ndarray) -> fit.FitResult:
    """fit.fit from starts scaled to the data (the generic grid does not know a loss's scale)."""
    return fit.fit(ANNEALING, X, y, starts=_starts(X, y))


def warmup_of(g: pd.DataFrame, warmup_steps: int | None) -> int:
    """The given warmup, else the run's optim.warmup_steps config column, else 0."""
    if warmup_steps is not None:
        return int(warmup_steps)
    if "optim.warmup_steps" in g.columns:
        w = pd.to_numeric(g["optim.warmup_steps"], errors="coerce").iloc[0]
        return int(w) if np.isfinite(w) else 0
    return 0


def lr_history(g: pd.DataFrame, metric: str, skip_steps: int):
    """One run's logged points and its whole LR sequence: (steps, updates done before each point's loss, update
    k's LR at index k - 1, loss), at logged steps with a finite metric, past skip_steps, after >= 1 update."""
    for c in ("step", "lr", metric):
        if c not in g.columns:
            raise ConfigError(f"curve law: curves have no {c!r} column (analysis/load.py curves() gives them)")
    step, lr, y = (pd.to_numeric(g[c], errors="coerce").to_numpy(float) for c in ("step", "lr", metric))
    ok = np.isfinite(step) & np.isfinite(lr) & (step >= 1)
    if not ok.any():
        raise ConfigError(f"curve law: run {g['run_id'].iloc[0]} has no logged step with a finite lr")
    order = np.argsort(step[ok])
    n = int(step[ok].max())
    lr_all = np.interp(np.arange(1, n + 1), step[ok][order], lr[ok][order])  # update k's LR at index k - 1
    # logged step k -> updates done: k (eval_loss) or k - 1 (train_loss; module docstring)
    done = np.nan_to_num(step, nan=-1).astype(int) - (1 if metric == "train_loss" else 0)
    keep = ok & (done >= 1) & np.isfinite(y) & (step > skip_steps)
    return step[keep], done[keep], lr_all, y[keep]


def _run_series(g: pd.DataFrame, metric: str, lam: float, skip_steps: int, warmup_steps: int | None):
    """One run's (steps, S1, S2, loss) at its logged steps with a finite metric, past skip_steps, with S1 > 0."""
    step, done, lr_all, y = lr_history(g, metric, skip_steps)
    S1, S2 = areas(lr_all, lam, warmup_of(g, warmup_steps))
    keep = S1[done - 1] > 0
    return step[keep], S1[done - 1][keep], S2[done - 1][keep], y[keep]


def _points(df: pd.DataFrame, metric: str, lam: float, skip_steps: int, warmup_steps: int | None):
    parts = [_run_series(g, metric, lam, skip_steps, warmup_steps) for _, g in df.groupby("run_id", sort=True)]
    X = np.concatenate([np.stack([p[1], p[2]], 1) for p in parts])
    return X, np.concatenate([p[3] for p in parts])


def _check(X: np.ndarray, y: np.ndarray) -> None:
    if len(y) < 2 * len(ANNEALING.raw):
        raise ConfigError(f"fit annealing: {len(y)} usable curve points; need at least {2 * len(ANNEALING.raw)}")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError("fit annealing: losses must be finite and positive, LRs finite")
    if np.ptp(X[:, 1]) <= 0:
        raise ConfigError("fit annealing: S2 is constant (the LR never drops), so C cannot be identified; "
                          "fit a run whose LR decays (cosine, WSD cooldown, ...)")


MIN_EVALS = 8  # curve_metric: eval points per run below which the curve laws fall back to the train loss


def curve_metric(df: pd.DataFrame) -> str:
    """eval_loss when every run logs at least MIN_EVALS finite eval losses (a fixed eval set: no batch noise),
    else train_loss (whose batch-to-batch spread the fit then has to average out)."""
    if "eval_loss" in df.columns:
        n = pd.to_numeric(df["eval_loss"], errors="coerce").notna().groupby(df["run_id"]).sum()
        if len(n) and n.min() >= MIN_EVALS:
            return "eval_loss"
    return "train_loss"


def select_runs(curves_df: pd.DataFrame, fit_runs: Iterable[str] | None, law: str) -> pd.DataFrame:
    """The curves of fit_runs (None: all), refusing names that are not there."""
    df = curves_df
    if fit_runs is not None:
        runs = [str(r) for r in fit_runs]
        missing = sorted(set(runs) - set(df["run_id"].astype(str)))
        if missing:
            raise ConfigError(f"fit {law}: fit_runs {missing} are not in the curves")
        df = df[df["run_id"].astype(str).isin(runs)]
    if df.empty:
        raise ConfigError(f"fit {law}: no curve rows to fit")
    return df


def errors(step: np.ndarray, pred: np.ndarray, y: np.ndarray) -> dict:
    """A predicted curve against the observed one: relative errors (pred - obs) / obs, mean |.| and at the end."""
    rel = (pred - y) / y
    last = int(np.argmax(step))
    return {"n_points": len(y), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "final_rel_error": float(rel[last]), "final_step": int(step[last]),
            "final_loss": float(y[last]), "final_pred": float(pred[last])}


def fit_annealing(curves_df: pd.DataFrame, *, metric: str | None = None, lam: float | None = None,
                  fit_runs: Iterable[str] | None = None, skip_steps: int = 0,
                  warmup_steps: int | None = None) -> dict:
    """Fit the law to the full curves of runs (all, or those in fit_runs) from load.curves(); `testbed fit` JSON.

    metric: None picks eval_loss where every run logs enough of it (curve_metric). lam: None (default) searches
    LAMS and keeps the lowest objective (diagnostics.lam_search); a number fixes it. skip_steps drops logged steps
    <= it. warmup_steps: None reads each run's optim.warmup_steps column (else 0).
    """
    df = select_runs(curves_df, fit_runs, "annealing")
    metric = curve_metric(df) if metric is None else metric
    fits = {}
    for lm in (LAMS if lam is None else (float(lam),)):
        X, y = _points(df, metric, lm, skip_steps, warmup_steps)
        _check(X, y)
        fits[lm] = (_fit(X, y), X, y)
    lam_best = min(fits, key=lambda k: fits[k][0].diagnostics["objective"])
    res, X, y = fits[lam_best]
    pred = res.predict(X)
    diag = {**res.diagnostics, "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
            "mean_abs_rel_error": float(np.mean(np.abs(pred - y) / y)), "metric": metric,
            "fit_runs": sorted(map(str, df["run_id"].unique())), "skip_steps": skip_steps,
            "lam_chosen_by": "fixed" if lam is not None else "grid"}
    if lam is None:
        diag["lam_search"] = {str(k): v[0].diagnostics["objective"] for k, v in fits.items()}
    return {"law": ANNEALING.name, "formula": ANNEALING.formula, "params": {**res.params, "lam": lam_best},
            "ci": None, "derived": {}, "diagnostics": diag, "n_points": res.n_points}


def _law_value(params: dict, S1: np.ndarray, S2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return params["L0"] + params["A"] * np.asarray(S1, float) ** -params["alpha"] - params["C"] * np.asarray(S2)


def predict_curve(params: dict, lr_sequence: np.ndarray, lam: float | None = None,
                  warmup_steps: int = 0) -> np.ndarray:
    """The law's loss after each update of ANY LR sequence (entry i: after updates 1..i+1); lam defaults to
    params["lam"] (fit_annealing's), else 0.999."""
    lam = params.get("lam", 0.999) if lam is None else lam
    return _law_value(params, *areas(lr_sequence, lam, warmup_steps))


def predict_runs(result: dict, curves_df: pd.DataFrame, run_ids: Iterable[str], *, skip_steps: int = 0,
                 warmup_steps: int | None = None) -> dict[str, dict]:
    """Other runs' curves predicted from their logged LR sequences (the law's point: fit on one schedule,
    predict another), with relative errors (pred - obs) / obs: mean |.| over logged steps and at the last one."""
    p, metric = result["params"], result["diagnostics"].get("metric", "train_loss")
    out = {}
    for rid in map(str, run_ids):
        g = curves_df[curves_df["run_id"].astype(str) == rid]
        if g.empty:
            raise ConfigError(f"predict annealing: run {rid} is not in the curves")
        step, S1, S2, y = _run_series(g, metric, p["lam"], skip_steps, warmup_steps)
        if not len(y):
            raise ConfigError(f"predict annealing: run {rid} has no usable {metric} after step {skip_steps}")
        out[rid] = errors(step, _law_value(p, S1, S2), y)
    return out


def curve(result: dict, g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, observed, predicted) of one run's curve under the fitted law (the figure's lines)."""
    p = result["params"]
    step, S1, S2, y = _run_series(g, result["diagnostics"].get("metric", "train_loss"), p["lam"], 0, None)
    return step, y, _law_value(p, S1, S2)


def schedule_label(r: pd.Series) -> str:
    """A run's LR schedule in words from its optim.* columns, e.g. "wsd 1-sqrt 20%", "cosine to 0.1"."""
    name = str(r.get("optim.schedule", ""))
    final = pd.to_numeric(r.get("optim.final_lr_frac"), errors="coerce")
    to = f" to {final:g}" if pd.notna(final) and final > 0 else ""
    if name == "wsd":
        frac = pd.to_numeric(r.get("optim.cooldown_frac"), errors="coerce")
        return f"wsd {r.get('optim.cooldown_shape', '')} {frac:.0%}{to}".replace("  ", " ")
    return f"{name}{to}" if name in ("cosine", "linear") else name


def _value(v) -> str:
    """A config value as written: 1280, not the 1280.0 a column with gaps (NaN) turns it into."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else str(v)


def run_labels(curves_df: pd.DataFrame) -> dict[str, str]:
    """run_id -> its schedule in words (schedule_label; else the optim.* settings that differ), followed by the
    other settings that differ (e.g. seed=1) where runs share a schedule; the run_id where nothing tells them apart."""
    per_run = curves_df.drop_duplicates("run_id").set_index("run_id")
    varies = [c for c in per_run.columns if (c == "seed" or "." in c) and per_run[c].astype(str).nunique() > 1]
    if "optim.schedule" in per_run.columns:
        labels = {str(r): schedule_label(row) for r, row in per_run.iterrows()}
    else:
        labels = {str(r): " ".join(f"{c.removeprefix('optim.')}={per_run.at[r, c]}" for c in varies
                                   if c.startswith("optim.")) for r in per_run.index}
    if len(set(labels.values())) < len(labels):
        rest = [c for c in varies if not c.startswith("optim.")]
        labels = {r: " ".join([lab] + [f"{c}={_value(per_run.at[r, c])}" for c in rest]).strip()
                  for r, lab in labels.items()}
    return labels if all(labels.values()) and len(set(labels.values())) == len(labels) else {
        str(r): str(r) for r in per_run.index}


def plot_curves(result: dict, curves_df: pd.DataFrame, held: Iterable[str], path, curve_fn, title: str) -> None:
    """Observed curves (points) and a curve law (fitted runs solid, held-out runs dashed), each run's LR below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from testbed.analysis import plots

    held, labels = set(map(str, held)), run_labels(curves_df)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for i, (rid, g) in enumerate(sorted(curves_df.groupby("run_id"), key=lambda t: (str(t[0]) in held, str(t[0])))):
        if i >= 10:  # a readable figure: the first ten runs (fitted first)
            break
        step, y, pred = curve_fn(result, g)
        out = str(rid) in held
        ax.plot(step, y, "o", color=f"C{i}", ms=2, alpha=0.5)
        ax.plot(step, pred, color=f"C{i}", lw=1.5, ls="--" if out else "-",
                label=f"{labels.get(str(rid), rid)}{' (predicted)' if out else ' (fitted)'}")
        ax_lr.plot(pd.to_numeric(g["step"]), pd.to_numeric(g["lr"]), color=f"C{i}", lw=1)
    ax.set(ylabel=result["diagnostics"].get("metric", "train_loss"), yscale="log", title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    ax_lr.set(xlabel="step", ylabel="LR")
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)


def plot_annealing(result: dict, curves_df: pd.DataFrame, held: Iterable[str], path) -> None:
    """The annealing law's curves (plot_curves)."""
    p = result["params"]
    plot_curves(result, curves_df, held, path, curve,
                f"LR-annealing law: L0={p['L0']:.3g} A={p['A']:.3g} alpha={p['alpha']:.3g} C={p['C']:.3g} "
                f"lam={p['lam']}")
