"""The optimum of a loss-vs-log2(hp) curve (docs/transfer.md), the statistics under analysis/transfer.py.

A parabola through the points within 1.2x of the minimum and within WINDOW grid points of it; its vertex is
log2 eta*, unless the minimum sits at the edge of the kept points, the parabola is concave or too few points are
left (then the observed argmin, with the reason). `bootstrap_ci` resamples seeds; `loss_at` reads a curve's loss
at another curve's optimum (the transfer penalty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW = 2  # grid points on each side of the minimum that the parabola sees
MAX_RATIO = 1.2  # the protocol drops points above 1.2x the per-width minimum
ON_GRID = 1e-6  # a transferred log2 optimum this close to a grid value reads the observed point


@dataclass
class Cell:
    """One (panel, axis value): the log2 hp grid and a seeds x grid matrix of losses (NaN: diverged or missing)."""

    x: np.ndarray  # log2 hp values tried at this axis value, ascending
    seeds: list[Any]
    loss: np.ndarray  # (n_seeds, n_x), the seed's mean over its finite completed runs at that x
    n_valid: np.ndarray  # (n_seeds, n_x) finite completed runs behind each entry

    def means(self) -> np.ndarray:
        """Per-x mean over the seeds that have a finite value (NaN where none has)."""
        return _weighted_means(np.ones((1, len(self.seeds))), self.loss)[0]


@dataclass
class Fit:
    """The optimum of one loss-vs-log2(hp) curve: the parabola vertex, or the observed argmin when not trusted."""

    log2_opt: float
    loss_opt: float
    edge: bool  # True: the optimum is the observed argmin (grid edge, concave fit or too few points)
    coef: tuple[float, float, float] | None  # a, b, c of a x^2 + b x + c when a > 0 on >= 3 points
    fit_range: tuple[float, float] | None  # lowest and highest x the parabola was fitted to
    reason: str | None = None

    def predict(self, x: float) -> float:
        a, b, c = self.coef
        return a * x * x + b * x + c


# --- fitting ------------------------------------------------------------------------------------------------------
def _weighted_means(weights: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(B, S) seed multiplicities x (S, X) losses -> (B, X) means over the finite entries (NaN where none)."""
    finite = np.isfinite(loss)
    total = weights @ np.where(finite, loss, 0.0)
    count = weights @ finite.astype(float)
    return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def _fit_rows(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised over the rows of y (B, X): drop NaN and > 1.2x min points, least-squares parabola, fallback."""
    finite = np.isfinite(y)
    has = finite.any(1)
    ymin = np.where(finite, y, np.inf).min(1)
    # The lowest points only (docs/transfer.md): within 1.2x of the minimum AND within WINDOW grid points of
    # it. Loss vs log2 LR is asymmetric (steep on the high side), so a parabola through the whole 1.2x band put
    # its vertex loss below every observed point in the transfer sweep of docs/transfer.md.
    near = np.abs(np.arange(len(x))[None, :] - np.where(finite, y, np.inf).argmin(1)[:, None]) <= WINDOW
    keep = finite & (y <= MAX_RATIO * ymin[:, None]) & near
    n = keep.sum(1)
    x0 = x.mean()
    xc = x - x0  # centred for a well-conditioned normal equation
    basis = np.stack([xc**2, xc, np.ones_like(xc)], 1)  # (X, 3)
    gram = np.einsum("bx,xi,xj->bij", keep.astype(float), basis, basis)
    rhs = np.einsum("bx,xi->bi", np.where(keep, y, 0.0), basis)
    cen = np.full((len(y), 3), np.nan)
    solvable = n >= 3
    if solvable.any():
        cen[solvable] = np.linalg.solve(gram[solvable], rhs[solvable][..., None])[..., 0]
    a, b, c = cen.T
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = x0 - b / (2 * a)
        vertex_loss = c - b * b / (4 * a)
    i = np.where(keep, y, np.inf).argmin(1)
    lo, hi = np.where(keep, x, np.inf).min(1), np.where(keep, x, -np.inf).max(1)
    at_edge = (x[i] == lo) | (x[i] == hi)
    convex = solvable & (a > 0)
    inside = convex & (vertex >= lo) & (vertex <= hi)
    good = inside & ~at_edge
    xopt = np.where(has, np.where(good, vertex, x[i]), np.nan)
    lopt = np.where(has, np.where(good, vertex_loss, y[np.arange(len(y)), i]), np.nan)
    coef = np.stack([a, b - 2 * a * x0, a * x0 * x0 - b * x0 + c], 1)  # back to uncentred x
    return dict(xopt=xopt, lopt=lopt, edge=has & ~good, has=has, keep=keep, n=n, lo=lo, hi=hi, i=i,
                at_edge=at_edge, convex=convex, inside=inside, vertex=vertex, coef=coef)


def fit_optimum(x: np.ndarray, loss: np.ndarray) -> Fit:
    """Locates log2 eta* on one curve (x = log2 hp ascending, loss = mean over seeds, NaN = no finite run)."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    f = {k: v[0] for k, v in _fit_rows(x, loss[None]).items()}
    coef = tuple(float(c) for c in f["coef"]) if f["convex"] else None
    fit_range = (float(f["lo"]), float(f["hi"])) if f["has"] else None
    if not f["has"]:
        return Fit(math.nan, math.nan, True, None, None, "no finite completed run")
    reason = None
    if f["edge"]:
        xm = x[f["i"]]
        if f["n"] < 3:
            reason = f"only {f['n']} points within {MAX_RATIO}x of the minimum (a parabola needs 3)"
        elif f["at_edge"] and xm in (x[0], x[-1]):
            side = "lowest" if xm == x[0] else "highest"
            reason = f"the minimum is at the {side} grid value (log2 = {xm:g}): extend the grid"
        elif f["at_edge"]:
            side = "lower" if xm == f["lo"] else "higher"
            reason = (f"the minimum (log2 = {xm:g}) has no kept neighbour on its {side} side "
                      f"(diverged or above {MAX_RATIO}x the minimum)")
        elif not f["convex"]:
            reason = "the parabola through the points is concave"
        else:
            reason = f"the parabola vertex (log2 = {f['vertex']:.3g}) lies outside the fitted points"
        reason += "; using the observed minimum"
    return Fit(float(f["xopt"]), float(f["lopt"]), bool(f["edge"]), coef, fit_range, reason)


def bootstrap_ci(cell: Cell, n_boot: int, rng: np.random.Generator) -> tuple[float, float] | None:
    """95% percentile CI of log2 eta*, resampling the seed set (same resample across the whole hp grid)."""
    s = len(cell.seeds)
    if n_boot <= 0 or s < 2:
        return None
    weights = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(float)
    xopt = _fit_rows(cell.x, _weighted_means(weights, cell.loss))["xopt"]
    xopt = xopt[np.isfinite(xopt)]
    return (float(np.percentile(xopt, 2.5)), float(np.percentile(xopt, 97.5))) if len(xopt) else None


def loss_at(cell: Cell, fit: Fit, x: float) -> float | None:
    """Loss of this width at log2 hp = x: observed on the grid, else its parabola, else linear interpolation."""
    means = cell.means()
    on_grid = np.abs(cell.x - x) < ON_GRID
    if on_grid.any():
        v = means[on_grid][0]
        return float(v) if np.isfinite(v) else None
    if fit.coef is not None and fit.fit_range[0] <= x <= fit.fit_range[1]:
        return fit.predict(x)
    finite = np.isfinite(means)
    if finite.sum() >= 2 and cell.x[finite][0] <= x <= cell.x[finite][-1]:
        return float(np.interp(x, cell.x[finite], means[finite]))
    return None


def why_missing(cell: Cell, x: float) -> str:
    """Why a width has no loss at x: its runs there diverged, or x is off its grid."""
    means = cell.means()
    finite = np.isfinite(means)
    if not finite.any():
        return "no finite run at this width"
    if any(abs(g - x) < ON_GRID or (g > x > cell.x[finite][-1]) or (g < x < cell.x[finite][0])
           for g in cell.x[~finite]):
        return "the runs there diverged (it does not transfer)"
    return "it lies off this width's grid"
