"""Figure plumbing every analysis figure shares: one save (one dpi, parent directories created), the publication
style and canvas of analysis/figures.py, and the coordinate-check panels.

Object API with the Agg canvas only here, so pyplot's global backend is never touched by these helpers.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from testbed.config import ConfigError

DPI = 150  # every raster figure (.png) is written at this resolution
FORMATS = (".png", ".svg", ".pdf")  # what the publication figures (analysis/figures.py) write
STYLE = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 7.5, "legend.framealpha": 0.85, "axes.spines.top": False, "axes.spines.right": False,
         "lines.linewidth": 1.3, "svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}
GRID_ALPHA = 0.3
N_CMAP = "viridis"
N_LABEL = "N (parameters)"
LOSS_LABEL = "loss (nats/token)"
COMPUTE_LABEL = "compute C = 6ND (FLOPs)"


def save(fig, out: str | Path) -> Path:
    """Writes the figure in the format its suffix names, at DPI, creating parent directories; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def check_format(out: str | Path) -> Path:
    """A publication figure's path: .png, .svg or .pdf (ConfigError naming --plot otherwise)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--plot {out}: unknown figure format {out.suffix!r}; use {', '.join(FORMATS)}")
    return out


def styled(fn):
    """Draw under STYLE (rc_context: restored afterwards, backend untouched)."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kw)
    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.2, 3.8)):
    """A constrained-layout Figure on the Agg canvas with gridded axes: (fig, flat array of axes)."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(alpha=GRID_ALPHA, lw=0.5)
        ax.grid(alpha=GRID_ALPHA / 3, lw=0.4, which="minor")
    return fig, axes


def n_norm(N) -> LogNorm:
    """LogNorm over the model sizes (widened when there is only one)."""
    N = np.asarray(N, np.float64)
    N = N[np.isfinite(N) & (N > 0)]
    lo, hi = (N.min(), N.max()) if N.size else (1.0, 10.0)
    return LogNorm(lo / 1.5, hi * 1.5) if lo == hi else LogNorm(lo, hi)


def n_colorbar(fig: Figure, ax, norm: LogNorm) -> None:
    """The model-size colour bar."""
    fig.colorbar(ScalarMappable(norm=norm, cmap=N_CMAP), ax=ax, label=N_LABEL, pad=0.02)


def si(x: float) -> str:
    """2.1e8 -> '215M', 1e11 -> '100B' (parameter and token counts in titles)."""
    for div, s in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{s}"
    return f"{x:.3g}"


class LossLocator(LogLocator):
    """Loss axes are log but rarely a decade wide: plain 'nice' ticks (2.5, 3, 3.5) there, 1-2-5 per decade beyond."""

    def tick_values(self, vmin, vmax):
        if 0 < vmin < vmax < 10 * vmin:
            return MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
        return super().tick_values(vmin, vmax)


def loglog(ax, xlabel: str, ylabel: str = LOSS_LABEL) -> None:
    """Log-log axes with loss ticks written plainly."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.yaxis.set_major_locator(LossLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_coordcheck(result: dict, out_path: str | Path) -> Path:
    """One panel per step: mean |activation| vs width (or depth), one line per module, log-log (muP Fig. 5)."""
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
    return save(fig, out_path)
