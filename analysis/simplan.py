"""Adaptive plan vs a uniform IsoFLOP grid, in simulation: how much compute each needs for the same interval at the
target (`testbed simulate --design plan`).

Per repeat, on losses drawn from a known law and noise model: the grid is fitted (bootstrap) and its 95% interval
width at the target is the bar. The plan starts from the grid's smallest budgets (a seed sweep), then repeats
plan -> "train" (draw the planned runs' losses) -> refit, each round choosing up to k runs by analysis/design.py within
a round budget (a fraction of what is spent so far, so rounds grow geometrically as a researcher's would), until its
own bootstrap interval is as narrow as the grid's or it has spent the grid's compute. The result is the compute the
plan needed, as a fraction of the grid's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from testbed.analysis import design, fit, laws, plots, simulate

from testbed.config import ConfigError

PAD = 64  # every fit pads to this many rows (one compiled program for all rounds); more points fall back to 128
SIZES_PER_DECADE, BUDGETS_PER_DECADE = 6, 4  # candidate grid: log-spaced model sizes and budgets


def candidates(N: np.ndarray, C: np.ndarray) -> dict[str, np.ndarray]:
    """Every (size, budget) over the grid's ranges: sizes from the smallest to the largest N of the grid, budgets
    from its smallest to its largest C; D = C / 6N. The plan may not train anything larger than the grid does, nor
    outside its tokens-per-parameter range widened by design.RATIO_MARGIN (the rule `testbed plan` applies)."""
    lo, hi = np.log10(N.min()), np.log10(N.max())
    sizes = np.logspace(lo, hi, max(2, int(round((hi - lo) * SIZES_PER_DECADE)) + 1))
    clo, chi = np.log10(C.min()), np.log10(C.max())
    budgets = np.logspace(clo, chi, max(2, int(round((chi - clo) * BUDGETS_PER_DECADE)) + 1))
    n, c = (a.ravel() for a in np.meshgrid(sizes, budgets))
    d = c / (6 * n)
    ratio = C / (6 * N ** 2)
    keep = (d / n >= ratio.min() / design.RATIO_MARGIN) & (d / n <= ratio.max() * design.RATIO_MARGIN)
    return {"N": n[keep], "D": d[keep], "C": c[keep]}


def _fit_width(N, D, y, target: str, flops: float, bootstrap: int, seed: int, starts) -> tuple[Any, float, float]:
    """The fit, its 95% bootstrap interval width of the log target, and the point estimate."""
    pad = PAD if len(N) <= PAD else 2 * PAD
    r = fit.fit(laws.CHINCHILLA, np.stack([N, D], 1), y, bootstrap=bootstrap, seed=seed, starts=starts, pad_to=pad)
    lo, hi = design.boot_interval(r.boot_raw, target, flops) or (np.nan, np.nan)
    return r, hi - lo, design.target_value(design.raw_vector(r.raw), target, flops)


def compare(params: dict[str, float], noise: str, grid: str, *, target: str = "loss",
            target_flops: float | None = None, seed_budgets: int = 2, k: int = 4, round_growth: float = 0.25,
            repeats: int = 10, bootstrap: int = 200, seed: int = 0,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the comparison `repeats` times; per repeat the grid's width and compute, and the plan's rounds."""
    t0 = time.perf_counter()
    q = simulate.parse_params("chinchilla", ",".join(f"{k_}={v}" for k_, v in params.items()))
    kind, sigma = simulate.parse_noise(noise)
    if target not in design.TARGETS:
        raise ConfigError(f"--target: unknown {target!r}; choose {' or '.join(design.TARGETS)}")
    if not grid.startswith("isoflop:"):
        raise ConfigError(f"--grid: {grid!r} must be a built-in grid isoflop:C1,C2,...:K:SPAN (the uniform design "
                          "the plan is compared with), e.g. isoflop:1e18,1e19,1e20:7:1.5")
    g = simulate.design_points(grid, q)
    budgets = np.unique(g["C"])
    if len(budgets) <= seed_budgets:
        raise ConfigError(f"--grid: {len(budgets)} budgets; the plan's seed takes the smallest {seed_budgets}, so the "
                          "grid needs more (e.g. isoflop:1e18,1e19,1e20:7:1.5)")
    if k < 1 or not 0 < round_growth:
        raise ConfigError(f"--k must be >= 1 and the round growth > 0 (got {k}, {round_growth})")
    flops = float(target_flops) if target_flops else 10 * float(budgets.max())
    seed_mask = g["C"] <= budgets[seed_budgets - 1]
    cand = candidates(g["N"], g["C"])
    law = lambda N, D: q["E"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]  # noqa: E731
    starts, rng = simulate.coarse_starts(q), np.random.default_rng(seed)
    grid_flops = float(g["C"].sum())
    truth = design.target_value(design.raw_vector({"e": np.log(q["E"]), "a": np.log(q["A"]), "b": np.log(q["B"]),
                                                   "alpha": q["alpha"], "beta": q["beta"]}), target, flops)
    reps = []
    for i in range(repeats):
        y_grid = simulate.draw(law(g["N"], g["D"]), g["N"], kind, sigma, rng)
        _, w_grid, est_grid = _fit_width(g["N"], g["D"], y_grid, target, flops, bootstrap, i, starts)
        N, D, C = g["N"][seed_mask], g["D"][seed_mask], g["C"][seed_mask]
        y = y_grid[seed_mask]  # the seed runs are the grid's own smallest budgets, same draws
        rounds, reached = [], None
        while True:
            r, w, est = _fit_width(N, D, y, target, flops, bootstrap, i, starts)
            spent = float(C.sum())
            rounds.append({"runs": len(N), "flops": spent, "width": w, "estimate": est})
            if w <= w_grid:
                reached = spent
                break
            left = grid_flops - spent
            s = design.state(r.raw, N, D, y, target, flops, r.boot_raw)
            have = {(round(float(np.log(n)), 6), round(float(np.log(d)), 6)) for n, d in zip(N, D, strict=True)}
            fresh = np.array([(round(float(np.log(n)), 6), round(float(np.log(d)), 6)) not in have
                              for n, d in zip(cand["N"], cand["D"], strict=True)])
            picks = design.select(s, cand["N"][fresh], cand["D"][fresh], cand["C"][fresh], k,
                                  min(left, max(round_growth * spent, cand["C"].min())), stop_width=w_grid)
            if not picks:
                break
            rounds[-1]["predicted_width"] = picks[-1]["width_after"]
            rounds[-1]["picks"] = [[p["N"], p["D"]] for p in picks]
            pN, pD = np.array([p["N"] for p in picks]), np.array([p["D"] for p in picks])
            N, D, C = np.r_[N, pN], np.r_[D, pD], np.r_[C, [p["flops"] for p in picks]]
            y = np.r_[y, simulate.draw(law(pN, pD), pN, kind, sigma, rng)]
        reps.append({"grid_width": w_grid, "grid_estimate": est_grid, "plan_rounds": rounds,
                     "plan_flops_to_reach": reached, "fraction": None if reached is None else reached / grid_flops})
        if log:
            frac = "not reached" if reached is None else f"{reached / grid_flops:.2f} of the grid's compute"
            log(f"simulate plan: repeat {i + 1}/{repeats}: grid width {w_grid:.4f}; plan {frac} in "
                f"{len(rounds) - 1} rounds ({time.perf_counter() - t0:.0f}s)")
    fr = np.array([np.inf if r["fraction"] is None else r["fraction"] for r in reps])
    return {"params": q, "noise": {"kind": kind, "sigma": sigma}, "grid": grid, "grid_points": len(g["N"]),
            "grid_flops": grid_flops, "target": target, "target_flops": flops, "truth": truth,
            "seed_budgets": [float(b) for b in budgets[:seed_budgets]], "seed_flops": float(g["C"][seed_mask].sum()),
            "k": k, "round_growth": round_growth, "repeats": repeats, "bootstrap": bootstrap,
            "candidates": len(cand["N"]), "median_fraction": float(np.median(fr)),
            "reached_within_half": float(np.mean(fr <= 0.5)), "reached": float(np.mean(np.isfinite(fr))),
            "median_grid_width": float(np.median([r["grid_width"] for r in reps])), "runs": reps,
            "elapsed_s": round(time.perf_counter() - t0, 1)}


def format_text(out: dict) -> str:
    """One line per repeat, then the medians."""
    lines = [f"simulate --design plan: target {out['target']} at C = {out['target_flops']:.3g}; grid {out['grid']} "
             f"({out['grid_points']} runs, {out['grid_flops']:.3g} FLOPs); plan seeded with budgets "
             f"{out['seed_budgets']} ({out['seed_flops'] / out['grid_flops']:.0%} of the grid's compute), k = "
             f"{out['k']} per round, rounds of {out['round_growth']:.0%} of the compute so far; {out['repeats']} "
             f"repeats, bootstrap {out['bootstrap']}",
             f"{'repeat':>6s} {'grid width':>10s} {'plan rounds':>11s} {'plan runs':>9s} {'plan compute / grid':>19s}"]
    for i, r in enumerate(out["runs"]):
        last = r["plan_rounds"][-1]
        frac = "not reached" if r["fraction"] is None else f"{r['fraction']:.2f}"
        lines.append(f"{i:6d} {r['grid_width']:10.4f} {len(r['plan_rounds']) - 1:11d} {last['runs']:9d} {frac:>19s}")
    lines.append(f"median: the plan reaches the grid's interval width with {out['median_fraction']:.2f} of its "
                 f"compute; within half in {out['reached_within_half']:.0%} of repeats, at all in {out['reached']:.0%}")
    return "\n".join(lines)


def plot(out: dict, path) -> None:
    """Interval width at the target vs compute (fractions of the grid's): each repeat's plan rounds and its grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    G = out["grid_flops"]
    for i, r in enumerate(out["runs"]):
        x = [p["flops"] / G for p in r["plan_rounds"]]
        y = [p["width"] for p in r["plan_rounds"]]
        ax.plot(x, y, "-o", color="C0", alpha=0.45, ms=3, lw=1, label="adaptive plan (rounds)" if i == 0 else None)
        ax.plot([1.0], [r["grid_width"]], "s", color="C3", alpha=0.6, ms=5,
                label="uniform IsoFLOP grid" if i == 0 else None)
        if r["fraction"] is not None:
            ax.plot([r["fraction"]], [y[-1]], "*", color="C0", ms=9, label="plan reaches the grid's width"
                    if i == 0 else None)
    ax.axvline(0.5, color="0.5", ls="--", lw=1, label="half the grid's compute")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute spent / the grid's compute")
    what = "loss at the compute-optimal point" if out["target"] == "loss" else "N_opt"
    ax.set_ylabel("95% interval width, ln(hi / lo)")
    ax.set_title(f"{what} at C = {out['target_flops']:.2g}: adaptive plan vs IsoFLOP grid\n{out['repeats']} "
                 f"repeats, noise {out['noise']['kind']}:{out['noise']['sigma']:g}, grid {out['grid']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)
