"""Fit a Law (analysis/laws.py) to points: log-space Huber, float64, damped Newton from every start at once.

Why not scipy/optax L-BFGS: on Chinchilla's 4,500-start grid a scipy L-BFGS-B loop took ~55 s here, and optax's
L-BFGS vmapped over starts took minutes and returned NaN from some starts. The problem has 4-5 parameters, so an
exact Hessian is cheap: each iteration solves (H + mu diag) step = grad (Levenberg-Marquardt damping, mu adapted
per start, a step kept only if it lowers the objective), for all starts in one vmapped, jitted program. The same
program refits 1,000 bootstrap resamples (point weights) from the point estimate.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from testbed.analysis.laws import Law

from testbed.config import ConfigError

HUBER_DELTA = 1e-3  # Hoffmann et al. / Epoch: Huber on log residuals
# a Law's `loss_function`: "huber" (default: Huber, delta HUBER_DELTA, on log residuals) or "lsq" (plain least
# squares on L itself, the objective of Gadre et al. 2024's scipy curve_fit: use it to reproduce fits made so)
LOSS_FUNCTIONS = ("huber", "lsq")
# Newton iterations: every start of the grid gets GRID_ITERS (Chinchilla's 4,500 starts: the best basin is reached
# in ~40); the POLISH best starts then get POLISH_ITERS more; bootstrap refits start at the optimum (BOOT_ITERS).
GRID_ITERS, POLISH, POLISH_ITERS, BOOT_ITERS = 40, 64, 200, 60
# on small data (< SMALL_N points: a quickstart sweep has 15) a resample moves the optimum further and a refit is
# cheap: 60 steps left 39 of 200 refits unconverged on 15 points (CIs too narrow), 1000 steps none, in 2 s
SMALL_N, BOOT_ITERS_SMALL = 100, 1000
GRAD_TOL = 1e-7  # |grad| at the optimum, relative to the number of points: above it the fit says "not converged"


@dataclass
class FitResult:
    law: Law
    raw: dict[str, float]
    params: dict[str, float]
    derived: dict[str, float]
    diagnostics: dict
    n_points: int
    ci: dict[str, list[float]] | None = None
    boot: dict[str, np.ndarray] | None = None  # per-resample natural params and derived values
    boot_raw: np.ndarray | None = None  # per-resample raw parameters [K, P] (predictions with CIs)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict(self.law, self.raw, X)


def predict(law: Law, raw: dict[str, float], X: np.ndarray) -> np.ndarray:
    """L at the rows of X (columns = law.inputs)."""
    with jax.enable_x64(True), np.errstate(over="ignore"):  # a law gone astray far out predicts inf: said by callers
        theta = jnp.asarray([raw[k] for k in law.raw], jnp.float64)
        return np.exp(np.asarray(law.log_predict(theta, jnp.asarray(X, jnp.float64))))


def predict_many(law: Law, thetas: np.ndarray, X: np.ndarray) -> np.ndarray:
    """L at the rows of X for each raw parameter vector: [K, n] (bootstrap bands of predictions)."""
    with jax.enable_x64(True):
        f = jax.vmap(law.log_predict, in_axes=(0, None))
        return np.exp(np.asarray(f(jnp.asarray(thetas, jnp.float64), jnp.asarray(X, jnp.float64))))


def pad_size(n: int) -> int:
    """Rows a fit of n points is padded to (zero weight, `fit`'s pad_to): one compiled program serves every table of
    similar size (a backtest's cuts, then the final fit)."""
    return -(-n // 64) * 64


_SOLVERS: dict[tuple, Callable] = {}
_MEMO: dict[tuple, FitResult] = {}  # recent grid fits without bootstrap, by law and data (oldest dropped first)
MEMO_SIZE = 32


def _solver(law: Law, iters: int, over: str) -> Callable:
    """The jitted damped Newton vmapped over starts (over="starts") or point weights (over="weights"), compiled
    once per (law, loss function, iters) in a process: a lam search or a two-sweep comparison reuses it."""
    key = (law.name, law.loss_function, iters, over)
    if key not in _SOLVERS:
        axes = (0, None, None, None) if over == "starts" else (None, None, None, 0)
        _SOLVERS[key] = jax.jit(jax.vmap(_newton(_objective(law), iters), in_axes=axes))
    return _SOLVERS[key]


def _objective(law: Law):
    if law.loss_function not in LOSS_FUNCTIONS:
        raise ConfigError(f"fit {law.name}: loss function {law.loss_function!r}; choose one of "
                          f"{', '.join(LOSS_FUNCTIONS)}")

    def f(theta, X, logy, w):
        logp = law.log_predict(theta, X)
        if law.loss_function == "lsq":
            return jnp.sum(w * (jnp.exp(logp) - jnp.exp(logy)) ** 2)
        return jnp.sum(w * optax.losses.huber_loss(logp - logy, delta=HUBER_DELTA))
    return f


def _newton(f, iters: int):
    """theta0[P], args -> (theta, value, |grad|): damped Newton with a monotone acceptance test."""
    grad, hess = jax.grad(f), jax.hessian(f)

    def solve(theta0, *args):
        P = theta0.shape[0]

        def body(_, state):
            theta, val, mu = state
            g, H = grad(theta, *args), hess(theta, *args)
            scale = jnp.maximum(jnp.abs(jnp.diag(H)), 1e-8)
            step = jnp.linalg.solve(H + mu * jnp.diag(scale) + 1e-12 * jnp.eye(P), g)
            new = theta - step
            nval = f(new, *args)
            ok = jnp.isfinite(nval) & (nval <= val) & jnp.all(jnp.isfinite(new))
            theta = jnp.where(ok, new, theta)
            val = jnp.where(ok, nval, val)
            mu = jnp.clip(jnp.where(ok, mu * 0.2, mu * 10.0), 1e-12, 1e12)
            return theta, val, mu

        v0 = f(theta0, *args)
        v0 = jnp.where(jnp.isfinite(v0), v0, jnp.inf)
        theta, val, _ = jax.lax.fori_loop(0, iters, body, (theta0, v0, jnp.asarray(1e-3, theta0.dtype)))
        return theta, val, jnp.linalg.norm(grad(theta, *args))

    return solve


def screen(law: Law, X: np.ndarray, y: np.ndarray, starts: np.ndarray, keep: int, chunk: int = 32) -> np.ndarray:
    """The keep starts with the lowest objective, evaluated without any Newton step (chunk at a time): for laws whose
    rows are wide (analysis/multipower.py), where a Hessian per start of a full grid would not fit in memory."""
    with jax.enable_x64(True):
        f = jax.jit(jax.vmap(_objective(law), in_axes=(0, None, None, None)))
        Xj, logy, w = jnp.asarray(X, jnp.float64), jnp.log(jnp.asarray(y, jnp.float64)), jnp.ones(len(y))
        vals = np.concatenate([np.asarray(f(jnp.asarray(starts[i:i + chunk]), Xj, logy, w))
                               for i in range(0, len(starts), chunk)])
    return starts[np.argsort(np.where(np.isfinite(vals), vals, np.inf))[:keep]]


def check_points(law: Law, X: np.ndarray, y: np.ndarray) -> None:
    """Degenerate input gets a ConfigError naming what is wrong."""
    if len(y) < law.needs():
        raise ConfigError(f"fit {law.name}: {len(y)} usable points; the law has {len(law.raw)} parameters and "
                          f"needs at least {law.needs()} (add runs, or loosen --filter)")
    positive = law.inputs if law.positive is None else law.positive
    for j, name in enumerate(law.inputs):
        col = X[:, j]
        if not np.all(np.isfinite(col)) or (name in positive and np.any(col <= 0)):
            raise ConfigError(f"fit {law.name}: column {name} has non-finite or non-positive values; the law takes "
                              "logs of it (check --columns, or --filter them out)")
        if np.unique(col).size < 2:
            raise ConfigError(f"fit {law.name}: column {name} is constant ({col[0]:.4g}); the law's {name} exponent "
                              "cannot be identified (vary it across runs)")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ConfigError(f"fit {law.name}: losses must be finite and positive (the fit is in log space)")
    if np.ptp(y) <= 1e-12 * np.max(y):
        raise ConfigError(f"fit {law.name}: every loss is {y[0]:.6g}; constant losses identify none of the law's "
                          "terms (check --columns loss=COLUMN, or that the runs differ)")
    if {"N", "D"} <= set(law.inputs):  # D a fixed power of N (e.g. 20 tokens per parameter on every run)
        logn, logd = np.log(X[:, law.inputs.index("N")]), np.log(X[:, law.inputs.index("D")])
        slope, icpt = np.polyfit(logn, logd, 1)
        if np.max(np.abs(logd - (slope * logn + icpt))) < 1e-6:
            raise ConfigError(f"fit {law.name}: D = {np.exp(icpt):.4g} N^{slope:.3f} on every point, so the law's N "
                              "and D terms cannot be told apart (the fit would trade one for the other); add runs at "
                              "other token counts for the same N (e.g. an IsoFLOP grid: a sweep with design: isoflop)")


def fit(law: Law, X: np.ndarray, y: np.ndarray, bootstrap: int = 0, seed: int = 0,
        starts: np.ndarray | None = None, polish_iters: int = POLISH_ITERS, boot_iters: int | None = None,
        pad_to: int | None = None) -> FitResult:
    """The best of every start of law's grid; with bootstrap > 0, percentile CIs from refits on resampled points.
    pad_to: append zero-weight copies of the first point up to this many rows, so fits of growing data (a
    progressive plan's rounds) reuse one compiled program instead of compiling per size (~10 s each; Farseer ~25 s);
    None pads to pad_size(n), so fits of 1-64 points share one program, 65-128 the next (0: no padding)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    check_points(law, X, y)
    pad_to = pad_size(len(y)) if pad_to is None else pad_to
    key = None
    if bootstrap == 0 and starts is None:  # deterministic: a backtest's Farseer starts refit Chinchilla's cuts
        key = (law.name, law.loss_function, X.tobytes(), y.tobytes(), polish_iters, pad_to)
        if key in _MEMO:
            return copy.deepcopy(_MEMO[key])
    starts = law.starts() if starts is None else np.asarray(starts, np.float64)
    n, pad = len(y), max(0, (pad_to or 0) - len(y))
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        f = _objective(law)
        Xp, yp = np.vstack([X, np.repeat(X[:1], pad, 0)]), np.concatenate([y, np.repeat(y[:1], pad)])
        Xj, logy = jnp.asarray(Xp), jnp.log(jnp.asarray(yp))
        w1 = jnp.asarray(np.r_[np.ones(n), np.zeros(pad)])
        solve = _solver(law, GRID_ITERS, "starts")
        thetas, vals, gnorms = (np.array(a) for a in solve(jnp.asarray(starts), Xj, logy, w1))
        top = np.argsort(np.where(np.isfinite(vals), vals, np.inf))[:POLISH]
        polish = _solver(law, polish_iters, "starts")
        pt, pv, pg = map(np.asarray, polish(jnp.asarray(thetas[top]), Xj, logy, w1))
        keep = np.isfinite(pv) & (pv <= vals[top])
        thetas[top[keep]], vals[top[keep]], gnorms[top[keep]] = pt[keep], pv[keep], pg[keep]
        grid_s = time.perf_counter() - t0
        best = int(np.nanargmin(np.where(np.isfinite(vals), vals, np.inf)))
        theta = thetas[best]
        H = np.asarray(jax.hessian(f)(jnp.asarray(theta), Xj, logy, w1))
        raw = dict(zip(law.raw, map(float, theta), strict=True))
        params = law.natural(raw)
        diag = _diagnostics(law, starts, thetas, vals, gnorms, best, H, len(y))
        diag["grid_fit_s"], diag["loss_function"] = round(grid_s, 3), law.loss_function
        result = FitResult(law, raw, params, law.derive(params), diag, len(y))
        if bootstrap:
            t1 = time.perf_counter()
            rng = np.random.default_rng(seed)
            W = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)
            W = np.hstack([W, np.zeros((bootstrap, pad))])
            if boot_iters is None:
                boot_iters = BOOT_ITERS if len(y) >= SMALL_N else BOOT_ITERS_SMALL
            boot_solve = _solver(law, boot_iters, "weights")
            bt, bv, bg = map(np.asarray, boot_solve(jnp.asarray(theta), Xj, logy, jnp.asarray(W)))
            ok = np.isfinite(bv) & (bg <= GRAD_TOL * len(y))
            result.boot, result.ci = _bootstrap_summary(law, bt[ok], bv[ok])
            result.boot_raw = bt[ok]
            diag["bootstrap"] = {"resamples": bootstrap, "not_converged": int((~ok).sum()), "seed": seed,
                                 "refits_start_at": "the point estimate", "fit_s": round(time.perf_counter() - t1, 3)}
            if (~ok).sum() > 0.01 * bootstrap:
                diag["warning"] = (diag.get("warning", "") + f" {(~ok).sum()} of {bootstrap} bootstrap refits did "
                                   "not converge; their CIs leave them out").strip()
    if key is not None:
        _MEMO[key] = copy.deepcopy(result)
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
    return result


def _diagnostics(law: Law, starts, thetas, vals, gnorms, best: int, H: np.ndarray, n: int) -> dict:
    """What a reader needs to trust (or not) the optimum: gradient, spread over starts, edges, conditioning."""
    finite = np.isfinite(vals)
    vbest = float(vals[best])
    near = finite & (vals <= vbest * 1.01)  # after GRID_ITERS: how often the grid lands in the best basin
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    theta = thetas[best]
    outside = [k for k, t, a, b in zip(law.raw, theta, lo, hi, strict=True) if not a <= t <= b]
    at_bound = [k for k, (a, b) in law.bounds.items()
                if not a + 1e-6 < theta[law.raw.index(k)] < b - 1e-6]
    eig = np.linalg.eigvalsh(0.5 * (H + H.T)) if np.all(np.isfinite(H)) else np.full(len(H), np.nan)
    cond = float(np.abs(eig).max() / max(np.abs(eig).min(), 1e-300))
    gnorm = float(gnorms[best])
    converged = bool(gnorm <= GRAD_TOL * n and np.all(eig > 0))
    return {
        "converged": converged,
        "objective": vbest,
        "grad_norm": gnorm,
        "hessian_condition": cond,
        "hessian_positive_definite": bool(np.all(eig > 0)),
        "starts": int(len(vals)),
        "starts_failed": int((~finite).sum()),
        "starts_within_1pct_of_best": int(near.sum()),
        "objective_spread": {"best": vbest, "median": float(np.median(vals[finite])) if finite.any() else None,
                             "worst": float(np.max(vals[finite])) if finite.any() else None},
        "outside_start_grid": outside,
        "at_bound": at_bound,
        **_identification(law, H, converged, at_bound),
        **({"warning": "NOT CONVERGED: the best start's gradient is not ~0 or its Hessian is not positive definite; "
                       "do not trust these parameters"} if not converged else {}),
    }


WEAK = 1e-8  # an eigenvalue of the scale-free Hessian below WEAK x its largest: a direction the data do not pin


def weak_parameters(law: Law, H: np.ndarray, weakest: bool = False) -> list[str]:
    """The raw parameters the data leave (nearly) free: those loading >= 0.3 on an eigenvector of the Hessian,
    rescaled to unit diagonal, whose eigenvalue is below WEAK x the largest (or not positive); with weakest, also
    those on the lowest eigenvalue's eigenvector (a fit still sliding along a valley when its iterations ran out)."""
    d = np.sqrt(np.maximum(np.abs(np.diag(H)), 1e-300))
    eig, vec = np.linalg.eigh(0.5 * (H + H.T) / np.outer(d, d))
    weak = eig < WEAK * max(float(eig.max()), 1e-300)
    if weakest:
        weak[int(np.argmin(eig))] = True
    names = {law.raw[i] for j in np.flatnonzero(weak) for i in np.flatnonzero(np.abs(vec[:, j]) >= 0.3)}
    names |= {law.raw[i] for i in np.flatnonzero(np.abs(np.diag(H)) <= 1e-300)}  # no curvature at all
    return [k for k in law.raw if k in names]


def _identification(law: Law, H: np.ndarray, converged: bool, at_bound: list[str]) -> dict:
    """For a fit that did not converge or ended at a bound: which parameters the data do not pin, and (from the
    law's `pin`) what data would."""
    if converged and not at_bound:
        return {}
    names = weak_parameters(law, H, weakest=not converged) if np.all(np.isfinite(H)) else []
    names += [k for k in at_bound if k not in names]
    if not names:
        return {}
    return {"unidentified": names, "to_pin": {k: law.pin[k] for k in names if k in law.pin}}


def _bootstrap_summary(law: Law, bt: np.ndarray, bv: np.ndarray) -> tuple[dict, dict]:
    """Per-resample natural parameters and derived values, and their 2.5/97.5 percentiles."""
    rows = []
    for theta, v in zip(bt, bv, strict=True):
        if not np.isfinite(v):
            continue
        p = law.natural(dict(zip(law.raw, map(float, theta), strict=True)))
        rows.append({**p, **law.derive(p)})
    keys = list(rows[0]) if rows else []
    boot = {k: np.array([r[k] for r in rows]) for k in keys}
    with np.errstate(all="ignore"):  # nan-only columns (no refit had a value) give nan CIs, not an error
        ci = {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] if np.isfinite(v).any()
              else [float("nan")] * 2 for k, v in boot.items()}
    return boot, ci
