"""Optimal next runs for a Chinchilla fit: which (N, D) points most shrink the 95% interval of a prediction at a
target compute, per FLOP spent.

The fit is least squares in log loss (Huber with a small delta behaves so near the optimum), so a set of runs with
Jacobian rows J = d log L / d theta has Fisher information J^T J / sigma^2, and a scalar target g(theta) has the
delta-method variance grad_g^T I^-1 grad_g. Adding one run with row j updates I^-1 by Sherman-Morrison, so every
candidate is scored in one matrix product and a k-run plan is k greedy steps (c-optimal design, Atkinson & Donev).
The linear width is rescaled to the fit's bootstrap interval on the current runs, so predicted widths are in the
units the fit reports; the rescaling is assumed to stay the same as runs are added.

Targets, both on a log scale so a width is relative (0.02: the 95% interval spans 2%):
- loss: log L*(C), the predicted loss at the compute-optimal point of C;
- n_opt: log N_opt(C).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from testbed.analysis import laws

TARGETS = ("loss", "n_opt")
Z95 = 1.959964
SIGMA_FLOOR = 1e-4  # log-loss residual scale never taken below this (a perfect fit would make every run "free")
RIDGE = 1e-10  # relative ridge on the Fisher information: few points leave directions unidentified
# candidates keep tokens per parameter within this factor of the measured runs' range: the law is trusted where it
# was measured. Unbounded, the design buys extreme runs (0.01 or 10,000 tokens per parameter) whose information
# holds only if the law is exactly right there; a model trained on 0.1 tokens per parameter is mostly warmup.
RATIO_MARGIN = 2.0


def raw_vector(raw: dict[str, float]) -> np.ndarray:
    return np.array([raw[k] for k in laws.CHINCHILLA.raw], np.float64)


def jacobian(theta: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """d log L / d (e, a, b, alpha, beta) at each (N, D): [n, 5]."""
    e, a, b, al, be = theta
    logN, logD = np.log(np.asarray(N, np.float64)), np.log(np.asarray(D, np.float64))
    tE, tA, tB = np.exp(e) * np.ones_like(logN), np.exp(a - al * logN), np.exp(b - be * logD)
    L = tE + tA + tB
    return np.stack([tE / L, tA / L, tB / L, -tA * logN / L, -tB * logD / L], axis=1)


def target_value(theta: np.ndarray, target: str, flops: float) -> float:
    """log L*(C) or log N_opt(C) under raw parameters theta."""
    q = {k: np.float64(v) for k, v in laws.CHINCHILLA.natural(
        dict(zip(laws.CHINCHILLA.raw, map(float, theta), strict=True))).items()}
    with np.errstate(all="ignore"):  # a refit with alpha or beta <= 0 has no optimum: nan, not a complex power
        o = laws.chinchilla_optimum(q, flops)
        return float(np.log(o["loss"] if target == "loss" else o["N_opt"]))


def boot_values(boot_raw: np.ndarray, target: str, flops: float) -> np.ndarray:
    """The log target under each bootstrap refit that has a compute-optimal point (finite values only)."""
    g = np.array([target_value(t, target, flops) for t in boot_raw], np.float64)
    return g[np.isfinite(g)]


def boot_interval(boot_raw: np.ndarray | None, target: str, flops: float,
                  min_refits: int = 1) -> tuple[float, float] | None:
    """The 95% percentile interval of the log target over the bootstrap refits (None with fewer than min_refits);
    its width hi - lo is the relative width every caller reports and compares."""
    g = boot_values(boot_raw, target, flops) if boot_raw is not None else np.empty(0)
    if len(g) < min_refits:
        return None
    return float(np.percentile(g, 2.5)), float(np.percentile(g, 97.5))


def fmt_width(w: float, target: str) -> str:
    """A relative width: percent for the loss; for N_opt (often wide) also the factor hi/lo = e^w."""
    return f"{w:.2%}" if target == "loss" else f"x{np.exp(w):.2f} (ln {w:.3f})"


def target_grad(theta: np.ndarray, target: str, flops: float, h: float = 1e-6) -> np.ndarray:
    """Central differences: 10 evaluations of a closed form, exact to ~1e-9."""
    g = np.zeros(5)
    for i in range(5):
        d = np.zeros(5)
        d[i] = h
        g[i] = (target_value(theta + d, target, flops) - target_value(theta - d, target, flops)) / (2 * h)
    return g


def residual_sigma(theta: np.ndarray, N, D, loss) -> float:
    """The log-loss residual scale of the fit (n - 5 degrees of freedom), floored at SIGMA_FLOOR."""
    from testbed.analysis import fit

    r = np.log(np.asarray(loss, np.float64)) - np.log(
        fit.predict(laws.CHINCHILLA, dict(zip(laws.CHINCHILLA.raw, theta, strict=True)), np.stack([N, D], 1)))
    dof = max(len(r) - 5, 1)
    return max(float(np.sqrt(np.sum(r ** 2) / dof)), SIGMA_FLOOR)


@dataclass
class State:
    """The current fit seen as a linear model: covariance of theta, the target's gradient, noise and calibration."""
    theta: np.ndarray
    cov: np.ndarray
    grad: np.ndarray
    sigma: float
    scale: float  # bootstrap width / linear width on the current runs (1 without a bootstrap)
    target: str
    flops: float
    estimate: float = field(default=0.0)

    @property
    def var(self) -> float:
        return float(self.grad @ self.cov @ self.grad)

    def width(self, var: float | np.ndarray | None = None) -> float | np.ndarray:
        """Predicted 95% interval width of the log target (relative width)."""
        v = self.var if var is None else var
        return self.scale * 2 * Z95 * np.sqrt(np.maximum(v, 0.0))


def state(raw: dict[str, float], N, D, loss, target: str, flops: float,
          boot_raw: np.ndarray | None = None) -> State:
    """The linearised fit at raw on the runs (N, D, loss); calibrated on the bootstrap refits when given."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    theta = raw_vector(raw)
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    sigma = residual_sigma(theta, N, D, loss)
    J = jacobian(theta, N, D)
    info = J.T @ J / sigma ** 2
    cov = np.linalg.pinv(info + RIDGE * np.trace(info) * np.eye(5))
    grad = target_grad(theta, target, flops)
    s = State(theta, cov, grad, sigma, 1.0, target, flops, target_value(theta, target, flops))
    ci = boot_interval(boot_raw, target, flops, min_refits=20)
    if ci is not None:
        w_boot, w_lin = ci[1] - ci[0], float(s.width())
        if w_lin > 0 and w_boot > 0:
            s.scale = w_boot / w_lin
    return s


def _greedy(s: State, J: np.ndarray, cost: np.ndarray, k: int, budget: float, per_flop: bool,
            stop_width: float | None) -> tuple[list[int], list[float]]:
    """k greedy picks by width reduction (per FLOP if per_flop) among affordable, unpicked candidates."""
    cov, picked, widths, left = s.cov.copy(), [], [], budget
    for _ in range(k):
        cj = J @ cov  # [m, 5]
        u = cj @ s.grad
        denom = s.sigma ** 2 + np.einsum("mi,mi->m", cj, J)
        var_now = float(s.grad @ cov @ s.grad)
        gain = s.width(var_now) - s.width(var_now - u ** 2 / denom)
        ok = cost <= left * (1 + 1e-9)
        ok[picked] = False
        if not ok.any():
            break
        score = np.where(ok, gain / cost if per_flop else gain, -np.inf)
        i = int(np.argmax(score))
        if not gain[i] > 0:
            break
        picked.append(i)
        cov = cov - np.outer(cj[i], cj[i]) / denom[i]
        widths.append(float(s.width(float(s.grad @ cov @ s.grad))))
        left -= cost[i]
        if stop_width is not None and widths[-1] <= stop_width:
            break
    return picked, widths


def select(s: State, N, D, cost, k: int, budget: float, stop_width: float | None = None) -> list[dict]:
    """Up to k candidates (arrays N, D, cost) within the budget that most shrink the target's interval.

    Two greedy passes, by width reduction and by reduction per FLOP; the plan is the one that ends narrower (with a
    stop width: the cheaper of those that reach it). Each pick records its cumulative predicted width."""
    N, D, cost = (np.asarray(v, np.float64) for v in (N, D, cost))
    if not len(N):
        return []
    J = jacobian(s.theta, N, D)
    plans = [_greedy(s, J, cost, k, budget, per_flop, stop_width) for per_flop in (False, True)]
    plans = [p for p in plans if p[0]]
    if not plans:
        return []

    def key(p):
        reached = stop_width is not None and p[1][-1] <= stop_width
        spent = float(cost[p[0]].sum())
        return (0, spent) if reached else (1, p[1][-1], spent)

    picked, widths = min(plans, key=key)
    out, before = [], float(s.width())
    for i, w in zip(picked, widths, strict=True):
        out.append({"index": i, "N": float(N[i]), "D": float(D[i]), "flops": float(cost[i]),
                    "width_before": before, "width_after": w, "width_reduction": before - w,
                    "reduction_per_flop": (before - w) / float(cost[i])})
        before = w
    return out
