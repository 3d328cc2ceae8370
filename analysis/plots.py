"""Figures drawn from result dicts (no training code): the coordinate-check panels.

Uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global backend.
"""

from __future__ import annotations

from pathlib import Path


def plot_coordcheck(result: dict, out_path: str | Path) -> Path:
    """One panel per step: mean |activation| vs width (or depth), one line per module, log-log (muP Fig. 5)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, sizes = result["steps"], result["sizes"]
    fig = Figure(figsize=(2.6 * steps, 3.0), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, steps, sharey=True, squeeze=False)[0]
    for s, ax in enumerate(axes):
        for name, mod in result["modules"].items():
            ys = [row[s] for row in mod["l1"]]
            ax.plot(sizes, ys, marker="o", ms=3, lw=1.2 if mod["checked"] else 0.8,
                    ls="-" if mod["checked"] else "--", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"step {s + 1}", fontsize=9)
        ax.set_xlabel(result["axis"])
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes[0].set_ylabel("mean |activation|")
    axes[-1].legend(fontsize=7, loc="best")
    verdict = "passed" if result["passed"] else "FAILED"
    fig.suptitle(f"coordinate check: {result['param']}, lr {result['lr']:g}, {verdict} "
                 f"(1/{result['tolerance']} < l1(4x)/l1(x) < {result['tolerance']} for steps >= 2)", fontsize=10)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    return out
