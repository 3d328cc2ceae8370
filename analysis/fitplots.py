"""The figure of each `testbed fit LAW --plot`: every plot_* takes (the objects the fit returned, its JSON, the path);
analysis/registry.py names one per law."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from testbed.analysis import plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_optima(objs: dict, out: dict, path: str | Path) -> None:
    """IsoFLOP (Chinchilla Fig. 3): loss vs N per budget with the fitted parabolas and their vertices, N_opt(C) as an
    inset; envelope: the N_opt(C) points and the power law."""
    plt = _pyplot()
    pts = out["derived"]["budgets" if objs["kind"] == "isoflop" else "bins"]
    good = [b for b in pts if b.get("used", True)]
    fig, ax = plt.subplots(figsize=(7, 4.8) if objs["kind"] == "isoflop" else (5.5, 4))
    if objs["kind"] == "isoflop":
        ax = _isoflop_profiles(ax, objs["rows"], pts, plt.get_cmap("viridis"))
    c = np.array([b["C"] for b in good])
    ax.scatter(c, [b["N_opt"] for b in good], color="k", s=12, label="N_opt per budget" if objs["kind"] != "isoflop"
               else None)
    grid = np.geomspace(c.min() / 3, c.max() * 3, 50)
    p = out["params"]
    ax.plot(grid, p["k_N"] * grid ** p["a"], color="C3", label=f"N_opt = {p['k_N']:.3g} C^{p['a']:.3f}")
    ax.set(xscale="log", yscale="log")
    if objs["kind"] == "isoflop":
        ax.set_xlabel("C (FLOPs)", fontsize=7)
        ax.set_ylabel("N_opt", fontsize=7)
        ax.tick_params(which="both", labelsize=6)
        ax.set_title(f"N_opt = {p['k_N']:.3g} C^{p['a']:.3f}", fontsize=7)
    else:
        ax.set(xlabel="compute C (FLOPs)", ylabel="N_opt", title=out["law"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)


def _isoflop_profiles(ax, rows, pts: list[dict], cmap):
    """Loss vs N per budget, each used budget's parabola and vertex; returns the inset axes for N_opt(C)."""
    for i, b in enumerate(pts):
        sel = np.isclose(rows["C"], b["C"], rtol=0.05)
        color = cmap(i / max(1, len(pts) - 1))
        ax.scatter(rows["N"][sel], rows["loss"][sel], s=14, color=color, alpha=1.0 if b.get("used") else 0.35,
                   label=f"C={b['C']:.2g}" + ("" if b.get("used") else " (not used)"))
        if b.get("used"):
            x = np.linspace(*np.log10(b["N_range"]), 60)  # loss = L_opt + curvature/2 (log10 N - log10 N_opt)^2
            ax.plot(10 ** x, b["loss_opt"] + 0.5 * b["curvature"] * (x - np.log10(b["N_opt"])) ** 2,
                    color=color, lw=1)
            ax.scatter([b["N_opt"]], [b["loss_opt"]], marker="*", s=130, color=color, edgecolors="k", zorder=3)
    ax.set(xscale="log", xlabel="N (parameters)", ylabel="final loss", title="IsoFLOP profiles (stars: vertices)")
    ax.legend(fontsize=7, loc="upper left")  # in the headroom made for the inset, clear of the points
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.7 * (hi - lo))  # headroom for the inset
    return ax.inset_axes([0.6, 0.6, 0.37, 0.36])


def plot_critbatch(objs: dict, out: dict, path: str | Path) -> None:
    """B_crit per target loss (hollow: outside the sampled batch sizes) and B_crit(L) = B* / L^(1/alpha_B)."""
    plt = _pyplot()
    rows = [t for t in out["derived"]["targets"] if t.get("B_crit") is not None and t["B_crit"] > 0]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for t in rows:
        ax.scatter(t["L"], t["B_crit"], color="k", s=18, facecolors="k" if t.get("interior") else "none")
    p = out["params"]
    L = np.geomspace(min(t["L"] for t in rows) * 0.95, max(t["L"] for t in rows) * 1.05, 50)
    ax.plot(L, p["B_star"] / L ** (1 / p["alpha_B"]), color="C3",
            label=f"B_crit = {p['B_star']:.3g} / L^(1/{p['alpha_B']:.3f})")
    ax.set(xscale="log", yscale="log", xlabel="target loss L", ylabel="critical batch B_crit (tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)


def plot_annealing(objs: dict, out: dict, path: str | Path) -> None:
    """The annealing law's curves (analysis/annealing.py)."""
    from testbed.analysis import annealing

    annealing.plot_annealing(out, objs["curves"], objs["held"], path)


def plot_multipower(objs: dict, out: dict, path: str | Path) -> None:
    """The multi-power law's curves (analysis/multipower.py)."""
    from testbed.analysis import multipower

    multipower.plot_multipower(out, objs["curves"], objs["held"], path)


def plot_overtrain(objs: dict, out: dict, path: str | Path) -> None:
    """Loss vs compute per token multiplier (analysis/figures.py, Gadre et al. 2024)."""
    from testbed.analysis import figures

    figures.overtrain(objs["rows"], out, path)


def plot_downstream(objs: dict, out: dict, path: str | Path) -> None:
    """Downstream error vs loss (analysis/figures.py, Gadre et al. 2024)."""
    from testbed.analysis import figures

    figures.downstream(objs["rows"], out, path)


def plot_steplaw(objs: dict, out: dict, path: str | Path) -> None:
    """The LR x batch landscape with the fitted optimum (analysis/figures.py, Step Law)."""
    from testbed.analysis import figures

    figures.lr_landscape(objs["table"], path, params=out["params"], band=out["diagnostics"]["band"])


def plot_law(objs: dict, out: dict, path: str | Path) -> None:
    """Loss vs compute (6ND) coloured by N, the fitted law's curves at each N, held-out points hollow."""
    import matplotlib

    plt = _pyplot()
    law, res, rows, held = objs["law"], objs["result"], objs["fit_rows"], objs["held"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    allN = np.unique(np.concatenate([rows[law.inputs[0]].to_numpy()] +
                                    ([held[law.inputs[0]].to_numpy()] if held is not None else [])))
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.LogNorm(allN.min(), allN.max()) if allN.min() < allN.max() else None
    color = (lambda n: cmap(norm(n))) if norm else (lambda n: cmap(0.5))
    for frame, hollow in ((rows, False), (held, True)):
        if frame is None:
            continue
        c6 = 6 * frame["N"] * frame["D"] if {"N", "D"} <= set(frame.columns) else frame["C"]
        ax.scatter(c6, frame["loss"], s=14, facecolors="none" if hollow else [color(n) for n in frame[law.inputs[0]]],
                   edgecolors=[color(n) for n in frame[law.inputs[0]]], label="held out" if hollow else None)
    for n in allN[:: max(1, len(allN) // 12)]:  # a dozen curves at most
        d = np.geomspace(rows["D"].min() / 2, rows["D"].max() * 2, 100)
        X = np.stack([np.full_like(d, n), d], axis=1)
        ax.plot(6 * n * d, res.predict(X), color=color(n), lw=0.8, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute 6ND (FLOPs)")
    ax.set_ylabel("loss")
    p = ", ".join(f"{k}={v:.4g}" for k, v in out["params"].items())
    ax.set_title(f"{law.name}: {p}", fontsize=8)
    if held is not None:
        ax.legend(fontsize=8)
    if norm:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=law.inputs[0])
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)


def plot_backtest(out: dict, path: str | Path) -> None:
    """`testbed backtest --plot`: |relative error| of every held-out run vs its extrapolation factor, one colour per
    law, with each law's median per half-decade of extrapolation as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (name, rec) in enumerate(out["laws"].items()):
        f = np.array([p["factor"] for p in rec["points"]])
        e = np.abs([p["rel_error"] for p in rec["points"]])
        ax.scatter(f, np.maximum(e, 1e-5), s=10, alpha=0.35, color=f"C{i}")
        mid = [np.sqrt(b["factor_range"][0] * b["factor_range"][1]) for b in rec["by_factor"]]
        ax.plot(mid, [max(b["median_abs_rel_error"], 1e-5) for b in rec["by_factor"]], "o-", color=f"C{i}",
                label=f"{name} (median {rec['median_abs_rel_error']:.2%})")
    ax.set(xscale="log", yscale="log", xlabel="extrapolation factor C / C_max fitted",
           ylabel="|relative error| of the predicted loss", title=f"backtest: {len(out['cuts'])} cuts by {out['by']}")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)
