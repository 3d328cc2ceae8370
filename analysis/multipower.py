"""The multi-power law (Luo et al., ICLR 2025): a whole loss curve from its LR schedule, any schedule.

    L(t) = L0 + A (S1(t) + S_W)^-alpha - LD(t)
    LD(t) = B sum_{k=1..t} (eta_(k-1) - eta_k) G(eta_k^-gamma S_k(t)),   G(x) = 1 - (C x + 1)^-beta

t counts updates after warmup, eta_0 is the peak LR, S1(t) the sum of eta_1..eta_t, S_W the sum of the warmup's
LRs and S_k(t) the sum of eta_k..eta_t. Each LR drop buys a loss drop that grows with the LR area trained after
it and saturates (G), scaled by the LR it dropped to (eta_k^-gamma): the annealing law's momentum term
(analysis/annealing.py) replaced by a saturating power law, which is what lets it predict WSD cooldowns of any
shape from a constant and a cosine run. Seven parameters; fitted with analysis/fit.py like every other law.

A point's row holds its S1(t) + S_W, then the run's LR drops up to t (zero-padded), the LRs they dropped to and
S_k(t); drops long before t are summed in bins of lag (run_rows), so a row has <= ~70 terms, not one per update.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np
import pandas as pd
from testbed.analysis import annealing, fit
from testbed.analysis.laws import Law

from testbed.config import ConfigError

FLOOR = annealing.FLOOR
EXACT_LAGS, PER_OCTAVE = 8, 8  # run_rows: the last 8 drops exact, older ones binned 8 per doubling of the lag
SCREEN_KEEP = 8  # starts kept for Newton after screening the data-scaled grid by objective

PIN = {  # what data pins each parameter when a fit cannot (diagnostics["to_pin"])
    **dict.fromkeys(("L0", "log_A", "alpha"), annealing.S1_TERM_PIN),
    "log_B": "a cooldown to a low final LR in the fitted runs: the size of its loss drop sets B (B and beta trade "
             "off while beta -> 0: then the drops' payoffs must differ in how they saturate, see beta)",
    "log_C": "cooldowns of different lengths (e.g. a cosine and a short WSD cooldown): how fast a drop's payoff "
             "saturates with the area trained after it sets C and beta",
    "beta": "cooldowns of different lengths (e.g. a cosine and a short WSD cooldown): how fast a drop's payoff "
            "saturates with the area trained after it sets C and beta",
    "gamma": "drops to different LRs (a cosine to 0.1 beside a cooldown to 0, or two final LRs): how the payoff "
             "depends on the LR reached sets gamma",
}


def _log_predict(theta, X):
    """log L, floored at FLOOR like the annealing law (a start whose L <= 0 everywhere stays put)."""
    L0, log_a, alpha, log_b, log_c, beta, gamma = (theta[i] for i in range(7))
    K = (X.shape[1] - 1) // 3
    S1, d_NxK, eta_NxK, sk_NxK = X[:, 0], X[:, 1:1 + K], X[:, 1 + K:1 + 2 * K], X[:, 1 + 2 * K:]
    # a drop to LR 0 at the point's own update has S_k(t) = 0: x = 0 (the limit as eta_k -> 0), not 0 * inf
    live = sk_NxK > 0
    x_NxK = jnp.where(live, jnp.exp(log_c - gamma * jnp.log(jnp.where(live, eta_NxK, 1.0))) * sk_NxK, 0.0)
    G_NxK = -jnp.expm1(-beta * jnp.log1p(x_NxK))  # 1 - (1 + x)^-beta, accurate for small x
    L = L0 + jnp.exp(log_a - alpha * jnp.log(S1)) - jnp.exp(log_b) * jnp.sum(d_NxK * G_NxK, axis=1)
    return jnp.log(jnp.maximum(L, FLOOR))


MULTIPOWER = Law(
    name="multipower",
    formula="L(t) = L0 + A (S1 + S_W)^-alpha - B sum_k (eta_(k-1) - eta_k) [1 - (C eta_k^-gamma S_k(t) + 1)^-beta]",
    inputs=("S1",),  # then the LR history columns (module docstring); fit.check_points checks S1 only
    raw=("L0", "log_A", "alpha", "log_B", "log_C", "beta", "gamma"),
    grid={"L0": (1.0, 2.0), "log_A": (0.0,), "alpha": (0.3, 0.6), "log_B": (0.0,), "log_C": (0.0,),
          "beta": (0.4, 1.0), "gamma": (0.3, 0.6)},  # generic; fit_multipower builds starts from the data
    log_predict=_log_predict,
    natural=lambda p: {"L0": p["L0"], "A": float(np.exp(p["log_A"])), "alpha": p["alpha"],
                       "B": float(np.exp(p["log_B"])), "C": float(np.exp(p["log_C"])), "beta": p["beta"],
                       "gamma": p["gamma"]},
    bounds={"L0": (0.0, np.inf), "alpha": (0.0, 3.0), "beta": (0.0, 10.0), "gamma": (-1.0, 3.0)},
    min_points=16,
    pin=PIN,
)


def _warmup_area(lr_all: np.ndarray, warmup: int) -> tuple[np.ndarray, float, float]:
    """(post-warmup LRs eta_1.., the peak eta_0, S_W)."""
    w = min(max(warmup, 0), len(lr_all) - 1)
    return lr_all[w:], float(lr_all[: w + 1].max()), float(lr_all[:w].sum())


def _bin_of(lag: np.ndarray, per_octave: int | None) -> np.ndarray:
    """Lag t - k -> its bin: lags below EXACT_LAGS one each, then per_octave bins per doubling (None: every lag)."""
    if per_octave is None:
        return lag
    far = EXACT_LAGS + np.floor(per_octave * np.log2(np.maximum(lag, EXACT_LAGS) / EXACT_LAGS)).astype(int)
    return np.where(lag < EXACT_LAGS, lag, far)


def run_rows(g: pd.DataFrame, metric: str, skip_steps: int, warmup_steps: int | None,
             per_octave: int | None = PER_OCTAVE):
    """One run's (steps, rows, loss): a row per logged point after warmup (module docstring), not yet padded.

    per_octave: drops further back than EXACT_LAGS updates are summed in bins of lag, per_octave per doubling, each
    at its drop-weighted eta_k and S_k(t) (None: every drop its own term, exact). A cosine of 2,000 updates has
    ~2,000 drops but at most 8 + 8 log2(2000 / 8) = 72 bins; the binned law is within 3e-5 of the exact one (tested).
    """
    step, done, lr_all, y = annealing.lr_history(g, metric, skip_steps)
    w = annealing.warmup_of(g, warmup_steps)
    eta, peak, s_w = _warmup_area(lr_all, w)
    cs = np.cumsum(eta)
    drop = np.r_[peak - eta[0], eta[:-1] - eta[1:]]  # d_k at index k - 1
    before = np.r_[0.0, cs[:-1]]  # S1(k - 1)
    rows, keep = [], done > w
    for u in done[keep]:
        t = u - w
        k = np.flatnonzero(drop[:t])  # only the updates whose LR dropped (or rose) contribute
        d, e, sk = drop[k], eta[k], cs[t - 1] - before[k]
        if per_octave is not None and len(k):
            b = _bin_of(t - 1 - k, per_octave)
            _, b = np.unique(b, return_inverse=True)
            wgt = np.bincount(b, np.abs(d))
            e, sk = np.bincount(b, np.abs(d) * e) / wgt, np.bincount(b, np.abs(d) * sk) / wgt
            d = np.bincount(b, d)
        rows.append((s_w + cs[t - 1], d, e, sk))
    return step[keep], rows, y[keep]


def to_matrix(rows: list, K: int | None = None) -> np.ndarray:
    """Rows padded to K drops (d = 0, eta = 1, S_k = 0: no contribution) as fit.fit's X."""
    K = max([len(r[1]) for r in rows] + [1]) if K is None else K
    X = np.zeros((len(rows), 1 + 3 * K))
    X[:, 1 + K:1 + 2 * K] = 1.0
    for i, (s1, d, eta, sk) in enumerate(rows):
        X[i, 0], X[i, 1:1 + len(d)], X[i, 1 + K:1 + K + len(d)], X[i, 1 + 2 * K:1 + 2 * K + len(d)] = s1, d, eta, sk
    return X


def _starts(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """3 x 2 x 2 x 3 x 3 x 2 x 2 starts scaled to the data: L0 at fractions of the lowest loss; A putting the S1 term
    at e^{-1, 1} x the loss span at the median S1; B making a drop to zero worth {1/e, 1, e} x that span; C putting
    x = 1 at the median drop point's eta^-gamma S_k, times e^{-2, 0, 2}."""
    K = (X.shape[1] - 1) // 3
    lo, span = float(y.min()), max(float(np.median(y) - y.min()), 1e-3 * float(y.min()))
    s1_med = float(np.median(X[:, 0]))
    d, eta, sk = X[:, 1:1 + K], X[:, 1 + K:1 + 2 * K], X[:, 1 + 2 * K:]
    peak = float(np.abs(d).sum(axis=1).max()) or 1.0
    mask = (d != 0) & (sk > 0) & (eta > 0)
    gammas = (0.3, 0.6)
    c0 = {g: -np.log(float(np.median(eta[mask] ** -g * sk[mask]))) if mask.any() else 0.0 for g in gammas}
    out = [[lo * f, np.log(span) + alpha * np.log(s1_med) + ka, alpha, np.log(span / peak) + kb, c0[gamma] + kc, beta,
            gamma]
           for f, alpha, ka, kb, kc, beta, gamma in itertools.product((0.5, 0.8, 0.95), (0.3, 0.6), (-1.0, 1.0),
                                                                      (-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (0.4, 1.0),
                                                                      gammas)]
    return np.array(out)


def _points(df: pd.DataFrame, metric: str, skip_steps: int, warmup_steps: int | None):
    parts = [run_rows(g, metric, skip_steps, warmup_steps) for _, g in df.groupby("run_id", sort=True)]
    rows = [r for p in parts for r in p[1]]
    return rows, np.concatenate([p[2] for p in parts])


def fit_multipower(curves_df: pd.DataFrame, *, metric: str | None = None, fit_runs: Iterable[str] | None = None,
                   skip_steps: int = 0, warmup_steps: int | None = None) -> dict:
    """Fit the law to the full curves of runs (all, or those in fit_runs) from load.curves(); `testbed fit` JSON.
    metric: None picks eval_loss where every run logs enough of it (annealing.curve_metric)."""
    df = annealing.select_runs(curves_df, fit_runs, "multipower")
    metric = annealing.curve_metric(df) if metric is None else metric
    rows, y = _points(df, metric, skip_steps, warmup_steps)
    if len(y) < MULTIPOWER.needs():
        raise ConfigError(f"fit multipower: {len(y)} usable curve points after warmup; need at least "
                          f"{MULTIPOWER.needs()} (log {metric} more often: train.eval_every)")
    X = to_matrix(rows)
    if not np.any(X[:, 1:1 + (X.shape[1] - 1) // 3]):
        raise ConfigError("fit multipower: the LR never drops after warmup in the fitted runs, so B, C, beta and "
                          "gamma cannot be identified; fit a run whose LR decays (cosine, WSD cooldown, ...)")
    # Newton with a Hessian per start over n x K terms: screen the grid by objective first (fit.screen)
    res = fit.fit(MULTIPOWER, X, y, starts=fit.screen(MULTIPOWER, X, y, _starts(X, y), keep=SCREEN_KEEP))
    pred = res.predict(X)
    diag = {**res.diagnostics, "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
            "mean_abs_rel_error": float(np.mean(np.abs(pred - y) / y)), "metric": metric,
            "fit_runs": sorted(map(str, df["run_id"].unique())), "skip_steps": skip_steps}
    return {"law": MULTIPOWER.name, "formula": MULTIPOWER.formula, "params": res.params, "raw": res.raw,
            "ci": None, "derived": {}, "diagnostics": diag, "n_points": res.n_points}


def predict_runs(result: dict, curves_df: pd.DataFrame, run_ids: Iterable[str], *, skip_steps: int = 0,
                 warmup_steps: int | None = None) -> dict[str, dict]:
    """Other runs' curves predicted from their logged LR sequences, with relative errors (pred - obs) / obs: mean
    |.| over logged steps and at the last one (the same keys as annealing.predict_runs)."""
    metric = result["diagnostics"].get("metric", "eval_loss")
    out = {}
    for rid in map(str, run_ids):
        g = curves_df[curves_df["run_id"].astype(str) == rid]
        if g.empty:
            raise ConfigError(f"predict multipower: run {rid} is not in the curves")
        step, rows, y = run_rows(g, metric, skip_steps, warmup_steps)
        if not len(y):
            raise ConfigError(f"predict multipower: run {rid} has no usable {metric} after warmup")
        pred = fit.predict(MULTIPOWER, result["raw"], to_matrix(rows))
        out[rid] = annealing.errors(step, pred, y)
    return out


def curve(result: dict, g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, observed, predicted) of one run's curve under the fitted law (the figure's lines)."""
    step, rows, y = run_rows(g, result["diagnostics"].get("metric", "eval_loss"), 0, None)
    return step, y, (fit.predict(MULTIPOWER, result["raw"], to_matrix(rows)) if rows else np.array([]))


def plot_multipower(result: dict, curves_df: pd.DataFrame, held: Iterable[str], path) -> None:
    """The law's curves over the observed ones (annealing.plot_curves)."""
    p = result["params"]
    annealing.plot_curves(result, curves_df, held, path, curve,
                          "multi-power law: " + " ".join(f"{k}={v:.3g}" for k, v in p.items()))
