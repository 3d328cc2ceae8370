"""Scaling laws as small declarative objects: a formula, named parameters, a start grid, a log-space predictor.

A Law predicts log L from input columns with a pure jax function of its raw parameters (the space the optimizer
searches, e.g. Chinchilla's a = log A), maps raw parameters to the natural ones named in the formula (E, A, B,
alpha, beta), and derives the quantities people quote (a = beta / (alpha + beta), N_opt(C), ...). analysis/fit.py
fits any Law the same way: log-space Huber, float64, exact derivatives, every start of the grid at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    inputs: tuple[str, ...]  # DataFrame columns the law reads (analysis/load.py's standard names)
    raw: tuple[str, ...]  # the optimizer's parameters, in order
    grid: dict[str, tuple[float, ...]]  # start values per raw parameter (their product is the start grid)
    log_predict: Callable  # (theta_raw[P], X[n, >= len(inputs)]) -> log L[n], jax-traceable; a law may read
    # columns after its inputs (analysis/multipower.py: each point's LR history)
    natural: Callable[[dict[str, float]], dict[str, float]]  # raw -> the formula's parameters
    derive: Callable[[dict[str, float]], dict[str, float]] = lambda p: {}
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # raw ranges that make sense (diagnostics)
    min_points: int = 0  # fewer usable points than this: refuse (0: one more than the parameters)
    positive: tuple[str, ...] | None = None  # inputs the law takes logs of, so must be > 0 (None: every input)
    pin: dict[str, str] = field(default_factory=dict)  # raw parameter -> the data that would identify it
    loss_function: str = "huber"  # analysis/fit.py's LOSS_FUNCTIONS: Huber on log residuals, or "lsq" on L

    def starts(self) -> np.ndarray:
        """The full start grid, [S, P] in raw space."""
        return np.array(list(itertools.product(*(self.grid[k] for k in self.raw))), dtype=np.float64)

    def needs(self) -> int:
        return self.min_points or len(self.raw) + 1


# --- Chinchilla (Hoffmann et al. 2022, Approach 3) -------------------------------------------------------------

def _chinchilla_log(theta, X):
    """log L = LSE(a - alpha log N, b - beta log D, e): L = E + A / N^alpha + B / D^beta without overflow."""
    e, a, b, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    logN, logD = jnp.log(X[:, 0]), jnp.log(X[:, 1])
    terms = jnp.stack([a - alpha * logN, b - beta * logD, jnp.broadcast_to(e, logN.shape)])
    return logsumexp(terms, axis=0)


def _chinchilla_natural(p: dict[str, float]) -> dict[str, float]:
    return {"E": float(np.exp(p["e"])), "A": float(np.exp(p["a"])), "B": float(np.exp(p["b"])),
            "alpha": p["alpha"], "beta": p["beta"]}


def chinchilla_derived(q: dict[str, float], flops_per_token_per_param: float = 6.0) -> dict[str, float]:
    """a = beta/(alpha+beta) (N_opt ~ C^a), b = alpha/(alpha+beta) and G: minimizing L at fixed C = k N D gives
    N_opt = G (C/k)^a and D_opt = (C/k)^b / G with G = (alpha A / (beta B))^(1/(alpha+beta))."""
    al, be = q["alpha"], q["beta"]
    # a (bootstrap) refit with alpha or beta <= 0, or a term fitted away (A or B = 0, as NNLS can give), has no
    # compute-optimal split: nan, not a ZeroDivisionError or Python's complex power
    with np.errstate(all="ignore"):
        ratio = np.asarray(al * np.asarray(q["A"], np.float64) / (be * np.asarray(q["B"], np.float64)), np.float64)
        G = np.where((ratio > 0) & np.isfinite(ratio), np.abs(ratio) ** (1.0 / np.asarray(al + be, np.float64)),
                     np.nan)
    G = float(G) if G.ndim == 0 else G
    return {"a": be / (al + be), "b": al / (al + be), "G": G, "k": flops_per_token_per_param}


def chinchilla_optimum(q: dict[str, float], C: float | np.ndarray, k: float = 6.0) -> dict[str, np.ndarray]:
    """N_opt, D_opt, tokens per parameter and the predicted loss at compute C (C = k N D)."""
    d = chinchilla_derived(q, k)
    c = np.asarray(C, dtype=np.float64) / k
    n_opt, d_opt = d["G"] * c ** d["a"], c ** d["b"] / d["G"]
    return {"N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt,
            "loss": q["E"] + q["A"] / n_opt ** q["alpha"] + q["B"] / d_opt ** q["beta"]}


CHINCHILLA = Law(
    name="chinchilla",
    formula="L = E + A / N^alpha + B / D^beta",
    inputs=("N", "D"),
    raw=("e", "a", "b", "alpha", "beta"),
    # Hoffmann et al.'s grid: 6 x 6 x 5 x 5 x 5 = 4,500 starts
    grid={"e": (-1.0, -0.5, 0.0, 0.5, 1.0), "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
          "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
          "beta": (0.0, 0.5, 1.0, 1.5, 2.0)},
    log_predict=_chinchilla_log,
    natural=_chinchilla_natural,
    derive=chinchilla_derived,
    bounds={"alpha": (0.0, 3.0), "beta": (0.0, 3.0)},
)


# --- Kaplan et al. 2020 ----------------------------------------------------------------------------------------

def _kaplan_log(theta, X):
    """log L = alpha_D log[(N_c/N)^(alpha_N/alpha_D) + D_c/D], with log N_c, log D_c as parameters."""
    lnc, ldc, aN, aD = theta[0], theta[1], theta[2], theta[3]
    logN, logD = jnp.log(X[:, 0]), jnp.log(X[:, 1])
    return aD * jnp.logaddexp((aN / aD) * (lnc - logN), ldc - logD)


KAPLAN = Law(
    name="kaplan",
    formula="L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D  (N: non-embedding parameters)",
    inputs=("N_nonembed", "D"),
    raw=("log_Nc", "log_Dc", "alpha_N", "alpha_D"),
    grid={"log_Nc": (10.0, 20.0, 30.0), "log_Dc": (10.0, 20.0, 30.0), "alpha_N": (0.05, 0.1, 0.3, 0.6),
          "alpha_D": (0.05, 0.1, 0.3, 0.6)},
    log_predict=_kaplan_log,
    natural=lambda p: {"N_c": float(np.exp(p["log_Nc"])), "D_c": float(np.exp(p["log_Dc"])),
                       "alpha_N": p["alpha_N"], "alpha_D": p["alpha_D"]},
    bounds={"alpha_N": (0.0, 3.0), "alpha_D": (1e-3, 3.0)},
)


LAWS = {law.name: law for law in (CHINCHILLA, KAPLAN)}
