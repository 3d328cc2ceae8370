"""Publication figures for scaling-law work: each public function takes data and an output path, writes the figure
in the format the suffix names (.png at analysis/plots.py's dpi, .svg with editable text, .pdf with TrueType fonts),
creating parent directories, and returns the Path. Object API with the Agg canvas only (analysis/plots.py's style
and canvas), so pyplot's global backend is never touched.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, PercentFormatter
from testbed.analysis import laws, plots

from testbed.config import ConfigError

LANDSCAPE_CLIP = 0.03  # lr_landscape's colour scale ends at 3% above the cell's best loss


def _save(fig, out) -> Path:
    return plots.save(fig, plots.check_format(out))


# --- 1. training curves and the compute-optimal frontier ----------------------------------------------------------
def _curve_points(cur: pd.DataFrame) -> pd.DataFrame:
    """One row per logged step (run_id, N, tokens, flops, loss) of the ok runs; a run's loss is its eval loss when
    it logged at least two, else its train loss (one metric per curve: mixing them would make it jagged)."""
    df = cur[cur["ok"].astype(bool)] if "ok" in cur.columns else cur
    df = df.assign(run_id=df["run_id"] if "run_id" in df.columns else "run").reset_index(drop=True)
    N = df["N"].to_numpy(np.float64) if "N" in df.columns else np.full(len(df), np.nan)
    flops = df["flops"].to_numpy(np.float64) if "flops" in df.columns else np.full(len(df), np.nan)
    flops = np.where(np.isfinite(flops), flops, 6 * N * df["tokens"].to_numpy(np.float64))
    out = pd.DataFrame({"run_id": df["run_id"].to_numpy(), "N": N, "tokens": df["tokens"].to_numpy(np.float64),
                        "flops": flops, "loss": np.nan})
    for idx in out.groupby("run_id", sort=False).groups.values():
        ev = df.loc[idx, "eval_loss"] if "eval_loss" in df.columns else pd.Series(dtype=float)
        col = "eval_loss" if ev.notna().sum() >= 2 else "train_loss"
        out.loc[idx, "loss"] = df.loc[idx, col].to_numpy(np.float64) if col in df.columns else np.nan
    good = np.isfinite(out["loss"]) & (out["loss"] > 0) & np.isfinite(out["tokens"]) & (out["tokens"] > 0)
    return out[good].reset_index(drop=True)


def _envelope(pts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The lowest loss any run reached with at most C FLOPs, at every logged C: min over runs of each curve
    (log-log interpolated inside its range), then a running minimum, so it is non-increasing and below every curve."""
    pts = pts[np.isfinite(pts["flops"]) & (pts["flops"] > 0)]
    grid = np.unique(pts["flops"].to_numpy(np.float64))
    best = np.full(grid.shape, np.inf)
    for _, g in pts.groupby("run_id", sort=False):
        g = g.groupby("flops", as_index=False)["loss"].min().sort_values("flops")
        f, lo = np.log(g["flops"].to_numpy()), np.log(g["loss"].to_numpy())
        inside = (grid >= g["flops"].iloc[0]) & (grid <= g["flops"].iloc[-1])
        best[inside] = np.minimum(best[inside], np.exp(np.interp(np.log(grid[inside]), f, lo)))
    return grid, np.minimum.accumulate(best)


@plots.styled
def loss_curves(cur: pd.DataFrame, out) -> Path:
    """Training curves vs tokens and vs compute with the compute-optimal frontier (Chinchilla Fig. 2 left, Kaplan
    Fig. 1): the frontier is where a larger model starts to beat every smaller one at equal FLOPs."""
    pts = _curve_points(cur)
    if pts.empty:
        raise ConfigError("loss_curves: no logged steps with a finite loss in the usable runs")
    norm = plots.n_norm(pts["N"])
    cmap = matplotlib.colormaps[plots.N_CMAP]
    fig, (ax_t, ax_c) = plots.new_figure(1, 2, (10.0, 3.9))
    for _, g in pts.groupby("run_id", sort=False):
        color = cmap(norm(g["N"].iloc[0])) if np.isfinite(g["N"].iloc[0]) else "C0"
        g = g.sort_values("tokens")
        ax_t.plot(g["tokens"], g["loss"], color=color, lw=0.9, alpha=0.85)
        ax_c.plot(g["flops"], g["loss"], color=color, lw=0.9, alpha=0.6)
    C, L = _envelope(pts)
    if len(C):
        keep = np.unique(np.searchsorted(C, np.geomspace(C[0], C[-1], 600)).clip(0, len(C) - 1))  # thin for SVG
        ax_c.plot(C[keep], L[keep], color="k", lw=2.6, label="compute-optimal frontier (lower envelope)", zorder=5)
        ax_c.legend(loc="upper right")
    plots.loglog(ax_t, "tokens seen D")
    plots.loglog(ax_c, "compute (FLOPs)")
    ax_t.set_title("(a) loss vs tokens")
    ax_c.set_title("(b) loss vs compute")
    if np.isfinite(pts["N"]).any():
        plots.n_colorbar(fig, [ax_t, ax_c], norm)
    return _save(fig, out)


# --- 2. final loss vs compute with the fitted L*(C) -----------------------------------------------------------------
def _chinchilla_params(p: dict) -> dict:
    missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in p]
    if missing:
        raise ConfigError(f"figure needs Chinchilla parameters E, A, B, alpha, beta; missing {', '.join(missing)}")
    return {k: p[k] for k in ("E", "A", "B", "alpha", "beta")}


def _band(res, C, q: tuple[float, float] = (2.5, 97.5)) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise percentiles of the compute-optimal loss L*(C) over the bootstrap refits (None without them)."""
    if res.boot is None:
        return None
    boot = {k: np.asarray(v, np.float64)[:, None] for k, v in _chinchilla_params(res.boot).items()}
    L = laws.chinchilla_optimum(boot, np.asarray(C, np.float64)[None, :])["loss"]
    L = L[np.all(np.isfinite(L), axis=1)]
    return tuple(np.percentile(L, q, axis=0)) if len(L) else None


def _compute(rows: pd.DataFrame) -> np.ndarray:
    if {"N", "D"} <= set(rows.columns):
        return 6.0 * rows["N"].to_numpy(np.float64) * rows["D"].to_numpy(np.float64)
    return rows["C_6ND" if "C_6ND" in rows.columns else "C"].to_numpy(np.float64)


@plots.styled
def loss_vs_compute(rows: pd.DataFrame, res, out, extrapolate: float = 100.0) -> Path:
    """Final loss vs 6ND with the fitted compute-optimal loss L*(C) and its bootstrap band, extrapolated past the
    data (Chinchilla Fig. A5 / Kaplan Fig. 13 style: how far the law is being asked to reach)."""
    C, loss, N = _compute(rows), rows["loss"].to_numpy(np.float64), rows["N"].to_numpy(np.float64)
    p = _chinchilla_params(res.params)
    grid = np.geomspace(C.min() / 3, C.max() * extrapolate, 240)
    norm = plots.n_norm(N)
    fig, (ax,) = plots.new_figure(size=(5.8, 4.0))
    band = _band(res, grid)
    if band is not None:
        ax.fill_between(grid, *band, color="C3", alpha=0.18, lw=0, label="95% bootstrap band")
    a = laws.chinchilla_derived(p)["a"]
    ax.plot(grid, laws.chinchilla_optimum(p, grid)["loss"], color="C3", lw=1.8,
            label=f"fitted L*(C) (N_opt ∝ C^{a:.3f})")
    ax.scatter(C, loss, c=N, cmap=plots.N_CMAP, norm=norm, s=22, edgecolors="k", linewidths=0.3, zorder=4,
               label="runs (final loss)")
    ax.axvline(C.max(), color="0.3", ls=":", lw=1.2)
    ax.text(C.max() * 1.15, 0.97, "extrapolation →", transform=ax.get_xaxis_transform(), va="top", fontsize=7.5,
            color="0.3")
    plots.loglog(ax, plots.COMPUTE_LABEL)
    ax.set_title(f"compute-optimal loss, {len(C)} runs")
    ax.legend(loc="lower left")
    plots.n_colorbar(fig, ax, norm)
    return _save(fig, out)


# --- 3. IsoLoss contours and the efficient frontier ---------------------------------------------------------------
@plots.styled
def chinchilla_contour(res_params: dict, out, rows: pd.DataFrame | None = None, c_range=None) -> Path:
    """IsoLoss contours of L(N, D = C/6N) over compute and model size with the efficient frontier N_opt(C), the
    curve through each contour's tangent point (Chinchilla Fig. 4)."""
    p = _chinchilla_params(res_params)
    Cr = _compute(rows) if rows is not None else None
    lo, hi = c_range or ((Cr.min() / 10, Cr.max() * 10) if Cr is not None else (1e18, 1e24))
    C = np.geomspace(lo, hi, 200)
    front = laws.chinchilla_optimum(p, C)
    n_lo, n_hi = front["N_opt"].min() / 30, front["N_opt"].max() * 30
    if rows is not None:
        n_lo, n_hi = min(n_lo, rows["N"].min() / 3), max(n_hi, rows["N"].max() * 3)
    N = np.geomspace(n_lo, n_hi, 200)
    CC, NN = np.meshgrid(C, N)
    L = p["E"] + p["A"] / NN ** p["alpha"] + p["B"] / (CC / (6 * NN)) ** p["beta"]
    # contours of log10(L - E) (the law's terms are power laws): evenly spread colours, resolved near the optimum
    Z = np.log10(L - p["E"])
    zf = np.log10(front["loss"] - p["E"])
    levels = np.linspace(zf.min(), zf.max() + 0.5, 17)
    as_loss = FuncFormatter(lambda z, _pos=None: f"{p['E'] + 10 ** z:.2f}")
    fig, (ax,) = plots.new_figure(size=(5.8, 4.3))
    cs = ax.contourf(CC, NN, Z, levels=levels, cmap="magma", extend="both", alpha=0.9)
    lines = ax.contour(CC, NN, Z, levels=levels[1::3], colors="w", linewidths=0.5, alpha=0.8,
                       linestyles="solid")
    ax.clabel(lines, fmt=as_loss, fontsize=6.5, colors="w")
    a = laws.chinchilla_derived(p)["a"]
    ax.plot(C, front["N_opt"], color="C0", lw=2.4, label=f"efficient frontier N_opt ∝ C^{a:.3f}")
    if rows is not None:
        ax.scatter(Cr, rows["N"], s=14, facecolors="w", edgecolors="k", linewidths=0.5, zorder=4,
                   label=f"runs ({len(rows)})")
    ax.set(xscale="log", yscale="log", xlabel=plots.COMPUTE_LABEL, ylabel=plots.N_LABEL, xlim=(lo, hi),
           ylim=(n_lo, n_hi))
    ax.set_title(f"IsoLoss contours of the fitted L(N, D) (levels log-spaced above E = {p['E']:.3g})")
    ax.grid(False, which="both")
    ax.legend(loc="upper left")
    fig.colorbar(cs, ax=ax, label=f"predicted {plots.LOSS_LABEL}", pad=0.02, format=as_loss, ticks=levels[::2])
    return _save(fig, out)


# --- 4. learning-rate x batch-size landscape ------------------------------------------------------------------------
def _select_cells(table: pd.DataFrame, max_cells: int) -> pd.DataFrame:
    """(N, D, runs) of up to max_cells cells: N values spread evenly over those swept, each one's best-covered cell
    first (most runs, then larger D), then second cells round-robin until max_cells; sorted by N, D."""
    counts = table.groupby(["N", "D"]).size().rename("runs").reset_index()
    Ns = np.sort(counts["N"].unique())
    if len(Ns) > max_cells:
        Ns = Ns[np.unique(np.linspace(0, len(Ns) - 1, max_cells).round().astype(int))]
    pool = counts[counts["N"].isin(Ns)].sort_values(["runs", "D"], ascending=False)
    pool = pool.assign(rank=pool.groupby("N").cumcount())
    chosen = pool.sort_values(["rank", "runs", "N"], ascending=[True, False, True]).head(max_cells)
    return chosen.sort_values(["N", "D"])[["N", "D", "runs"]].reset_index(drop=True)


def _tiles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value, the tile [lo, hi) it owns on its axis: halfway to the neighbouring swept values (irregular grids)."""
    u = np.unique(v)
    if len(u) == 1:
        lo, hi = u - 0.25, u + 0.25
    else:
        mid = (u[1:] + u[:-1]) / 2
        lo, hi = np.r_[2 * u[0] - mid[0], mid], np.r_[mid, 2 * u[-1] - mid[-1]]
    i = np.searchsorted(u, v)
    return lo[i], hi[i]


def _cell_view(g: pd.DataFrame, band: float, clip: float = LANDSCAPE_CLIP) -> dict:
    """One cell's runs, worst first (the best drawn last): (log2 lr, log2 B), their tiles, loss relative to the
    cell's best (clipped), the best run's point and which runs are within `band` of it."""
    g = g.sort_values("loss", ascending=False, kind="stable")
    loss = g["loss"].to_numpy(np.float64)
    rel = loss / loss.min() - 1
    x, y = np.log2(g["lr"].to_numpy(np.float64)), np.log2(g["B"].to_numpy(np.float64))
    i = int(np.argmin(loss))
    return {"x": x, "y": y, "xt": _tiles(x), "yt": _tiles(y), "rel": np.clip(rel, 0, clip), "best": (x[i], y[i]),
            "near": np.abs(rel) < band}


def _tile_patches(v: dict, mask: np.ndarray) -> list[Rectangle]:
    (x0, x1), (y0, y1) = v["xt"], v["yt"]
    return [Rectangle((a + 0.05 * (b - a), c + 0.05 * (d - c)), 0.9 * (b - a), 0.9 * (d - c))
            for a, b, c, d in zip(x0[mask], x1[mask], y0[mask], y1[mask], strict=True)]


@plots.styled
def lr_landscape(table: pd.DataFrame, out, params: dict | None = None, max_cells: int = 6,
                 band: float = 0.0025) -> Path:
    """Final loss over (log2 lr, log2 batch) per (N, D) cell with the best run, the near-optimal band the fit keeps
    and the fitted optimum (Step Law, Li et al. 2025, Fig. 3-style landscapes): is the optimum inside the sweep?"""
    from testbed.analysis import hplaws

    table = table.rename(columns={"bs": "B"}) if "B" not in table.columns else table
    cells = _select_cells(table, max_cells)
    ncols = min(3, len(cells))
    nrows = -(-len(cells) // ncols)
    fig, axes = plots.new_figure(nrows, ncols, (3.4 * ncols + 0.8, 3.0 * nrows + 0.5))
    norm, cmap = Normalize(0, LANDSCAPE_CLIP), "viridis_r"
    for ax, cell in zip(axes, cells.itertuples(), strict=False):
        v = _cell_view(table[(table["N"] == cell.N) & (table["D"] == cell.D)], band)
        every = np.ones(len(v["x"]), bool)
        ax.add_collection(PatchCollection(_tile_patches(v, every), array=v["rel"], cmap=cmap, norm=norm, lw=0))
        ax.add_collection(PatchCollection(_tile_patches(v, v["near"]), facecolors="none", edgecolors="k", lw=1.0))
        ax.set(xlim=(v["xt"][0].min(), v["xt"][1].max()), ylim=(v["yt"][0].min(), v["yt"][1].max()))
        if params is not None:
            lr_o, B_o = hplaws.predict(params, cell.N, cell.D)
            ax.scatter(np.log2(lr_o), np.log2(B_o), marker="X", s=120, color="w", edgecolors="k", lw=0.9,
                       zorder=5, clip_on=False)
        ax.scatter(*v["best"], marker="*", s=170, color="C3", edgecolors="w", lw=0.6, zorder=6)
        ax.set_title(f"N={plots.si(cell.N)}, D={plots.si(cell.D)} ({cell.runs} runs)", fontsize=8.5)
        ax.set(xlabel="log2 learning rate", ylabel="log2 batch (tokens)")
        ax.grid(False, which="both")
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    handles = [Patch(facecolor="none", edgecolor="k", label=f"within {band:.2%} of the cell's best"),
               Line2D([], [], ls="", marker="*", ms=11, color="C3", mec="w", label="best run")]
    if params is not None:
        handles.append(Line2D([], [], ls="", marker="X", ms=9, color="w", mec="k", label="Step Law fit optimum"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7.5)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(cells)]), pad=0.02, extend="max",
                 label="loss / cell best − 1", format=PercentFormatter(1.0, decimals=1))
    return _save(fig, out)


# --- 5. held-out predictions -----------------------------------------------------------------------------------------
def _rel(points: list[dict]) -> np.ndarray:
    return np.array([p["rel_error"] if "rel_error" in p else (p["pred"] - p["loss"]) / p["loss"] for p in points])


@plots.styled
def holdout_scatter(points_fit: list[dict] | None, points_held: list[dict], out, title: str = "") -> Path:
    """Predicted vs observed loss for held-out runs (fitted ones grey) against y = x and ±1%: the extrapolation
    check scaling-law papers report as a relative error (e.g. Farseer, Epoch's Chinchilla replication)."""
    fig, (ax,) = plots.new_figure(size=(4.6, 4.4))
    allp = list(points_fit or []) + list(points_held)
    obs = np.array([p["loss"] for p in allp])
    pred = np.array([p["pred"] for p in allp])
    lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
    pad = 0.07 * (hi - lo) + 1e-3 * hi
    xs = np.array([lo - pad, hi + pad])
    ax.plot(xs, xs, color="k", lw=1.0, label="y = x")
    ax.plot(xs, xs * 1.01, color="0.4", ls="--", lw=0.8, label="±1%")
    ax.plot(xs, xs * 0.99, color="0.4", ls="--", lw=0.8)
    if points_fit:
        ax.scatter([p["loss"] for p in points_fit], [p["pred"] for p in points_fit], s=10, color="0.6",
                   label=f"fitted ({len(points_fit)})", zorder=3)
    rel = _rel(points_held)
    ho, hp = [p["loss"] for p in points_held], [p["pred"] for p in points_held]
    ax.scatter(ho, hp, s=34, color="C3", edgecolors="k", lw=0.5, label=f"held out ({len(points_held)})", zorder=4)
    for o, pr, r in zip(ho, hp, rel, strict=True):
        ax.annotate(f"{r:+.2%}", (o, pr), xytext=(4, -9), textcoords="offset points", fontsize=6.5, color="C3")
    ax.set(xlim=xs, ylim=xs, aspect="equal", xlabel=f"observed {plots.LOSS_LABEL}",
           ylabel=f"predicted {plots.LOSS_LABEL}")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}held-out mean |rel error| {np.mean(np.abs(rel)):.2%}")
    ax.legend(loc="upper left")
    return _save(fig, out)


# --- 6-7. over-training and downstream laws (Gadre et al. 2024) ------------------------------------------------------
def _multipliers(rows: pd.DataFrame) -> np.ndarray:
    """M = D / N per row (or the table's M column), rounded to 2 significant digits so one sweep's M is one value."""
    M = rows["M"].to_numpy(np.float64) if "M" in rows.columns else (rows["D"] / rows["N"]).to_numpy(np.float64)
    mag = 10.0 ** (np.floor(np.log10(M)) - 1)
    return np.round(M / mag) * mag


def _overtrain_loss(params: dict, C, M) -> np.ndarray:
    """L(C, M) through analysis/overtrain.py's law (its log-space predictor) from the fit's natural parameters."""
    from testbed.analysis import fit, overtrain

    raw = {"log_E": np.log(params["E"]), "log_a": np.log(params["a"]), "log_b": np.log(params["b"]),
           "eta": params["eta"]}
    C, M = np.broadcast_arrays(np.asarray(C, np.float64), np.asarray(M, np.float64))
    return fit.predict(overtrain.OVERTRAIN, raw, np.stack([C.ravel(), M.ravel()], 1)).reshape(C.shape)


@plots.styled
def overtrain(rows: pd.DataFrame, fit_json: dict, out) -> Path:
    """Loss vs compute per token multiplier M = D/N with the fitted L(C, M) = E + (a M^η + b M^-η) C^-η (Gadre et
    al. 2024, Fig. 2): over-trained models follow parallel power laws shifted up from the compute-optimal one."""
    p = fit_json["params"]
    C, M = _compute(rows), _multipliers(rows)
    Ms = np.unique(M)
    cmap = matplotlib.colormaps["plasma"]
    color = {m: cmap(0.85 * i / max(len(Ms) - 1, 1)) for i, m in enumerate(Ms)}
    grid = np.geomspace(C.min() / 2, C.max() * 2, 120)
    fig, (ax,) = plots.new_figure(size=(5.8, 4.1))
    for m in Ms:
        sel = M == m
        ax.scatter(C[sel], rows["loss"].to_numpy()[sel], s=20, color=color[m], edgecolors="k", lw=0.3, zorder=4)
        ax.plot(grid, _overtrain_loss(p, grid, m), color=color[m], lw=1.1, label=f"M = {m:g}")
    m_opt = fit_json.get("derived", {}).get("M_opt")
    if m_opt is not None and np.isfinite(m_opt):
        ax.plot(grid, _overtrain_loss(p, grid, m_opt), color="k", ls="--", lw=1.0,
                label=f"M_opt = {m_opt:.3g} (compute-optimal)")
    plots.loglog(ax, plots.COMPUTE_LABEL)
    ax.set_title(f"over-training law: E={p['E']:.3g}, η={p['eta']:.3g} ({len(C)} runs)")
    ax.legend(title="tokens per parameter", loc="upper right", ncols=2 if len(Ms) > 6 else 1)
    return _save(fig, out)


@plots.styled
def downstream(rows: pd.DataFrame, fit_json: dict, out) -> Path:
    """Downstream top-1 error vs loss with the fitted Err(L) = ε - k exp(-γ L) (Gadre et al. 2024, Fig. 4): loss
    predicts downstream error, which rises to ε (about chance) as the loss grows."""
    from testbed.analysis import overtrain

    p = fit_json["params"]
    L, err = rows["loss"].to_numpy(np.float64), rows["err"].to_numpy(np.float64)
    span = L.max() - L.min()
    grid = np.linspace(max(L.min() - 0.15 * span, 1e-6), L.max() + 0.15 * span, 200)
    fig, (ax,) = plots.new_figure(size=(5.4, 3.9))
    ax.axhline(p["eps"], color="0.4", ls=":", lw=1.0, label=f"ε = {p['eps']:.3g} (error at infinite loss)")
    ax.plot(grid, overtrain.predict_error(p, grid), color="C3", lw=1.6,
            label=f"Err = {p['eps']:.3g} − {p['k']:.3g} exp(−{p['gamma']:.3g} L)")
    if "N" in rows.columns and np.isfinite(rows["N"]).all():
        norm = plots.n_norm(rows["N"])
        ax.scatter(L, err, c=rows["N"], cmap=plots.N_CMAP, norm=norm, s=22, edgecolors="k", lw=0.3, zorder=4,
                   label="runs")
        plots.n_colorbar(fig, ax, norm)
    else:
        ax.scatter(L, err, s=22, color="C0", edgecolors="k", lw=0.3, zorder=4, label="runs")
    ax.set(xlabel=plots.LOSS_LABEL, ylabel="downstream top-1 error")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(f"downstream error vs loss ({len(L)} runs)")
    ax.legend(loc="lower right")
    return _save(fig, out)


@plots.styled
def plan_history(hist: list[dict], out: str | Path) -> Path:
    """A progressive plan's rounds: the target's 95% interval width vs the sweep's compute, the width each round's
    plan predicted, and the threshold."""
    fig, (ax,) = plots.new_figure(size=(5.6, 3.8))
    x = np.array([h["flops_in_sweep"] for h in hist])
    w = np.array([h["width"] for h in hist])
    ax.plot(x, w, "-o", color="C0", label="fit (bootstrap 95% width)")
    for h in hist:
        if "predicted_width" in h:
            ax.plot([h["flops_in_sweep"], h["flops_in_sweep"] + h["planned_flops"]],
                    [h["width"], h["predicted_width"]], ":", color="C1", lw=1)
            ax.plot([h["flops_in_sweep"] + h["planned_flops"]], [h["predicted_width"]], "o", mfc="none",
                    color="C1", label="predicted by the round's plan" if h is hist[0] else None)
    ax.axhline(hist[-1]["threshold"], color="C3", ls="--", lw=1, label=f"threshold {hist[-1]['threshold']:.1%}")
    for h in hist:
        ax.annotate(str(h["round"]), (h["flops_in_sweep"], h["width"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xscale("log")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    what = "loss at the compute-optimal point" if hist[-1]["target"] == "loss" else "N_opt"
    ax.set_xlabel("FLOPs trained in the sweep")
    ax.set_ylabel("95% interval width (relative)")
    ax.set_title(f"{what} at C = {hist[-1]['target_flops']:.2g}: {hist[-1].get('stop', 'in progress')}")
    ax.legend(fontsize=7)
    return _save(fig, out)
