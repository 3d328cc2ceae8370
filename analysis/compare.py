"""`testbed compare A B --law chinchilla`: the same law fitted to two sweeps, their differences with bootstrap CIs.

Two recipes (parametrizations, data sets, schedules) are compared where it matters: the compute-optimal loss
L*(C) = min over N D = C/6 of the fitted law, at every compute, and the compute where the two curves cross. Each
sweep is bootstrapped over its own runs; resample k of A is paired with resample k of B (independent draws), so
the differences' percentile intervals carry both fits' uncertainty ("Scaling Laws for Robust Comparison").
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from testbed.analysis import laws, load, plots, registry

from testbed.config import ConfigError
from testbed.runstore import atomic_write_text

PER_DECADE = 20  # compute grid density where L*(C) is compared, crossings searched and multipliers read


def c_grid(lo: float) -> np.ndarray:
    """Compute from below the data (lo / 10, or 1e15 for larger sweeps) to 1e27 FLOPs."""
    start = min(1e15, lo / 10)
    return np.geomspace(start, 1e27, int(round(np.log10(1e27 / start) * PER_DECADE)) + 1)


def _optimal_loss(params: dict[str, np.ndarray], C: np.ndarray) -> np.ndarray:
    """L*(C) for one parameter set (scalars) or many (arrays, one per resample): shape [..., len(C)]."""
    p = {k: np.asarray(v, np.float64)[..., None] for k, v in params.items()}
    return laws.chinchilla_optimum(p, C)["loss"]


def _crossings(diff: np.ndarray, C: np.ndarray) -> list[float]:
    """Computes where diff (B - A) changes sign, interpolated in log C."""
    s = np.sign(diff)
    out = []
    for i in np.nonzero(s[:-1] * s[1:] < 0)[0]:
        t = diff[i] / (diff[i] - diff[i + 1])
        out.append(float(np.exp(np.log(C[i]) + t * (np.log(C[i + 1]) - np.log(C[i])))))
    return out


def multiplier(la: np.ndarray, lb: np.ndarray, C: np.ndarray) -> np.ndarray:
    """C / C_B, where C_B is the compute at which B's L*(C) reaches A's L*(C): how many times less compute B needs
    for A's loss (> 1: B is ahead). NaN where B's curve over the grid never reaches A's loss. la, lb: [..., n]."""
    la, lb = np.atleast_2d(la), np.atleast_2d(lb)
    logC = np.log(C)
    out = np.empty(la.shape)
    for i, (a, b) in enumerate(zip(la, lb, strict=True)):  # L* falls with C: interpolate log C against -L
        out[i] = np.exp(logC - np.interp(-a, -b, logC, left=np.nan, right=np.nan))
    return out


def _fit(law: str, data, columns, filter, bootstrap: int, seed: int) -> tuple[dict, Any, tuple[float, float]]:
    """One recipe's fit, its result and the compute (6ND) its runs span."""
    out, objs = registry.run(law, data, columns=columns, filter=filter, bootstrap=bootstrap, seed=seed)
    rows = objs["fit_rows"]
    c6 = 6 * rows["N"].to_numpy(float) * rows["D"].to_numpy(float)
    return out, objs["result"], (float(c6.min()), float(c6.max()))


def _check(law: str, bootstrap: int) -> None:
    if law not in ("chinchilla", "chinchilla-vp"):
        raise ConfigError(f"--law: compare needs a law with a compute-optimal loss (chinchilla, chinchilla-vp), "
                          f"got '{law}'")
    if bootstrap < 20:
        raise ConfigError(f"--bootstrap: compare needs >= 20 resamples for its intervals, got {bootstrap}")


def compare(a: str | Path, b: str | Path, law: str = "chinchilla", bootstrap: int = 200, seed: int = 0,
            columns: dict[str, str] | None = None, filter: str | None = None) -> tuple[dict, dict]:
    """JSON: both fits, parameter differences, L*(C) difference across compute, the crossover and its CI, and
    B's compute multiplier over A."""
    _check(law, bootstrap)
    fa, fb = _fit(law, a, columns, filter, bootstrap, seed), _fit(law, b, columns, filter, bootstrap, seed + 1)
    out, curves = _pair(fa, fb, str(a), str(b))
    return {"law": law, **out}, curves


TABLE_COLUMNS = ("run_id", "status", "N", "N_nonembed", "D", "C", "loss", "loss_se", "model.d_model")


def compare_by(data: str | Path, by: str | None = None, law: str = "chinchilla", bootstrap: int = 200,
               seed: int = 0, columns: dict[str, str] | None = None, filter: str | None = None,
               table_out: str | Path | None = None, baseline: str | None = None) -> tuple[dict, dict]:
    """One sweep (or table) holding several recipes: the law fitted to each value of column `by`, and every pair
    compared as `compare` does. `baseline` is A of its pairs (default: the first value in sorted order), the others
    follow in sorted order. `table_out`: write the runs (recipe, N, D, C, loss, status; a few KB) as a CSV this
    function reads back in place of the sweep."""
    _check(law, bootstrap)
    table = load.load(data, columns=columns, filter=filter)
    if by is None:
        by = next((c for c in ("recipe", "optim.name") if c in table.columns), None)
        if by is None:
            raise ConfigError("--by: the table has neither a 'recipe' nor an 'optim.name' column; name the column "
                              "that tells the recipes apart, e.g. --by optim.schedule")
    if by not in table.columns:
        raise ConfigError(f"--by: no column '{by}' in {data}; columns include "
                          f"{', '.join(sorted(c for c in table.columns if not c.startswith('data.'))[:20])}")
    if table_out is not None:  # before the fits, so a sweep whose fit fails still exports its runs
        keep = [by, *(c for c in TABLE_COLUMNS if c in table.columns and c != by)]
        atomic_write_text(Path(table_out), table[keep].to_csv(index=False))
    values = sorted(set(table[by].dropna().tolist()), key=str)
    if len(values) < 2:
        raise ConfigError(f"--by {by}: compare needs at least two recipes, found {values}")
    if baseline is not None:
        match = [v for v in values if str(v) == baseline]
        if not match:
            raise ConfigError(f"--baseline {baseline}: not a value of {by}; its values: {', '.join(map(str, values))}")
        values = [match[0], *(v for v in values if v != match[0])]
    fits = {}
    for i, v in enumerate(values):
        where = f"`{by}` == {v!r}"
        fits[v] = _fit(law, data, columns, f"({filter}) and {where}" if filter else where, bootstrap, seed + i)
    pairs, curves = [], []
    for i, va in enumerate(values):
        for vb in values[i + 1:]:
            out, cv = _pair(fits[va], fits[vb], str(va), str(vb))
            pairs.append(out)
            curves.append(cv)
    out = {"law": law, "data": str(data), "by": by, "recipes": {str(v): _brief(fits[v][0]) for v in values},
           "pairs": pairs}
    return out, {"pairs": curves}


def _pair(fa, fb, name_a: str, name_b: str) -> tuple[dict, dict]:
    """B against A: parameter differences, L*(C) differences, crossover and compute multiplier, with paired
    bootstrap CIs (resample k of A with resample k of B, independent draws)."""
    (out_a, ra, span_a), (out_b, rb, span_b) = fa, fb
    data_range = [max(span_a[0], span_b[0]), min(span_a[1], span_b[1])]  # compute both recipes cover
    C = c_grid(min(span_a[0], span_b[0]))
    k = min(len(next(iter(ra.boot.values()))), len(next(iter(rb.boot.values()))))
    diff = {}
    for p in ra.params:
        d = rb.boot[p][:k] - ra.boot[p][:k]
        diff[p] = {"value": rb.params[p] - ra.params[p], "ci": [float(np.percentile(d, 2.5)),
                                                                float(np.percentile(d, 97.5))]}
    la, lb = _optimal_loss(ra.params, C), _optimal_loss(rb.params, C)
    boot_a = _optimal_loss({p: ra.boot[p][:k] for p in ra.params}, C)
    boot_b = _optimal_loss({p: rb.boot[p][:k] for p in rb.params}, C)
    bd = boot_b - boot_a
    lo, hi = np.percentile(bd, 2.5, axis=0), np.percentile(bd, 97.5, axis=0)
    cross = _crossings(lb - la, C)
    boot_cross = [c[0] for c in (_crossings(row, C) for row in bd) if c]
    crossover: dict[str, Any] = {"C": cross[0] if cross else None, "all": cross,
                                 "fraction_of_resamples_crossing": len(boot_cross) / k,
                                 "ci": [float(np.percentile(boot_cross, 2.5)), float(np.percentile(boot_cross, 97.5))]
                                 if len(boot_cross) >= 10 else None}
    if cross:
        crossover["extrapolated"] = not data_range[0] <= cross[0] <= data_range[1]
    m, m_boot = multiplier(la, lb, C)[0], multiplier(boot_a, boot_b, C)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns where no resample reaches: NaN bounds
        m_lo, m_hi = np.nanpercentile(m_boot, 2.5, axis=0), np.nanpercentile(m_boot, 97.5, axis=0)
    every = max(1, len(C) // 12)
    out = {"a": {"data": name_a, **_brief(out_a)}, "b": {"data": name_b, **_brief(out_b)},
           "diff_b_minus_a": diff,
           "optimal_loss": [{"C": float(c), "a": float(x), "b": float(y), "b_minus_a": float(y - x),
                             "ci": [float(u), float(v)]}
                            for c, x, y, u, v in list(zip(C, la, lb, lo, hi, strict=True))[::every]],
           "crossover": crossover, "compute_multiplier": _multiplier_table(C, m, m_lo, m_hi, data_range),
           "bootstrap": k, "data_compute_range": data_range,
           "note": "C: training compute in FLOPs (C = 6ND); a, b: each fit's compute-optimal loss L*(C); "
                   "compute_multiplier: C / (the compute B needs for A's L*(C)), > 1 where B is ahead"}
    return out, {"C": C, "range": data_range, "a": la, "b": lb, "lo": lo, "hi": hi,
                 "band_a": np.percentile(boot_a, [2.5, 97.5], 0), "band_b": np.percentile(boot_b, [2.5, 97.5], 0),
                 "m": m, "m_lo": m_lo, "m_hi": m_hi, "names": (name_a, name_b)}


def _multiplier_table(C, m, m_lo, m_hi, data_range) -> list[dict]:
    """The multiplier at 5 computes across the data and at 10x and 100x beyond, each with its CI."""
    lo, hi = data_range
    at = [*np.geomspace(lo, hi, 5), hi * 10, hi * 100]
    rows = []
    for c in at:
        i = int(np.argmin(np.abs(np.log(C) - np.log(c))))
        v, v_lo, v_hi = (float(x[i]) if np.isfinite(x[i]) else None for x in (m, m_lo, m_hi))
        rows.append({"C": float(c), "multiplier": v, "ci": [v_lo, v_hi], "extrapolated": bool(c > hi * 1.001)})
    return rows


def format_text(out: dict) -> str:
    """Parameter differences, the crossover and the compute multiplier per pair, for a terminal."""
    if "pairs" not in out:
        return "\n".join(_format_pair(out, out["law"]))
    lines = [f"compare {out['law']} by {out['by']}: {len(out['recipes'])} recipes in {out['data']}"]
    for name, r in out["recipes"].items():
        p = r["params"]
        lines.append(f"  {name}: {r['n_points']} runs, E {p['E']:.4g} A {p['A']:.4g} B {p['B']:.4g} "
                     f"alpha {p['alpha']:.3g} beta {p['beta']:.3g}")
    for pair in out["pairs"]:
        lines += ["", *_format_pair(pair, out["law"])]
    return "\n".join(lines)


def _format_pair(out: dict, law: str) -> list[str]:
    lines = [f"compare {law}: B = {out['b']['data']} minus A = {out['a']['data']} ({out['bootstrap']} resamples)"]
    for p, d in out["diff_b_minus_a"].items():
        lines.append(f"  {p:>6}: A {out['a']['params'][p]:.5g}  B {out['b']['params'][p]:.5g}  B-A {d['value']:+.4g} "
                     f"[{d['ci'][0]:+.4g}, {d['ci'][1]:+.4g}]")
    c = out["crossover"]
    if c["C"] is None:
        lines.append(f"  L*(C) curves do not cross up to 1e27 FLOPs ({c['fraction_of_resamples_crossing']:.0%} "
                     "of resamples cross)")
    else:
        ci = f" [{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]" if c["ci"] else ""
        lo, hi = out["data_compute_range"]
        where = (f"; EXTRAPOLATED beyond the data's compute ({lo:.2g}..{hi:.2g})" if c.get("extrapolated")
                 else " (inside the data's compute range)")
        lines.append(f"  L*(C) curves cross at C = {c['C']:.3g} FLOPs{ci} "
                     f"({c['fraction_of_resamples_crossing']:.0%} of resamples cross){where}: the lead changes sign")
    lines.append("  compute multiplier (B reaches A's L*(C) with x times less compute; < 1: B needs more):")
    fmt = lambda v: "  n/a" if v is None else f"{v:5.3g}"  # noqa: E731
    for r in out["compute_multiplier"]:
        lines.append(f"    C {r['C']:9.3g}  x {fmt(r['multiplier'])}  [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]"
                     + ("  (extrapolated)" if r["extrapolated"] else ""))
    return lines


def _brief(out: dict) -> dict:
    return {k: out[k] for k in ("params", "ci", "n_points", "excluded") if k in out} | {
        "converged": out["diagnostics"]["converged"]}


def plot(curves: dict, out: dict, path: str | Path) -> None:
    """L*(C) of every recipe with 95% bands; per pair, L*_B - L*_A and the compute multiplier with their bands;
    the crossovers marked and the compute the data cover shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = curves["pairs"] if "pairs" in curves else [curves]
    outs = out["pairs"] if "pairs" in out else [out]
    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    colors = {}
    for cv in pairs:
        for key, name in zip(("a", "b"), cv["names"], strict=True):
            if name not in colors:
                colors[name] = f"C{len(colors)}"
                ax.plot(cv["C"], cv[key], color=colors[name], label=Path(name).name)
                ax.fill_between(cv["C"], *cv[f"band_{key}"], color=colors[name], alpha=0.2)
    for i, (cv, o) in enumerate(zip(pairs, outs, strict=True)):
        label, color = f"{Path(cv['names'][1]).name} vs {Path(cv['names'][0]).name}", f"C{i}" if len(pairs) > 1 else "k"
        ax2.plot(cv["C"], cv["b"] - cv["a"], color=color, label=label)
        ax2.fill_between(cv["C"], cv["lo"], cv["hi"], color=color, alpha=0.15)
        ax3.plot(cv["C"], cv["m"], color=color, label=label)
        ax3.fill_between(cv["C"], cv["m_lo"], cv["m_hi"], color=color, alpha=0.15)
        if o["crossover"]["C"] is not None:
            for axis in (ax2, ax3):
                axis.axvline(o["crossover"]["C"], color=color, ls="--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="compute-optimal loss L*(C)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="L*_B - L*_A (dashed: crossover)")
    ax3.axhline(1, color="grey", lw=0.8)
    ax3.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)",
            ylabel="compute multiplier of B over A (> 1: B ahead)")
    lo, hi = pairs[0]["range"]
    right = min(pairs[0]["C"][-1], hi * 1e3)  # the multiplier table reads to 100x beyond the data; show 1000x
    for axis in (ax, ax2, ax3):  # the compute the data measured; outside it the curves are extrapolations
        axis.axvspan(lo, hi, color="grey", alpha=0.1, lw=0)
        axis.set_xlim(pairs[0]["C"][0], right)
        axis.legend(fontsize=8)
    shown = np.concatenate([np.r_[cv["m"], cv["m_lo"], cv["m_hi"]][np.r_[cv["C"], cv["C"], cv["C"]] <= right]
                            for cv in pairs])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if shown.size:  # far-extrapolated CIs run to 1e-5..1e5: keep the axis on what can be read
        ax3.set_ylim(max(shown.min() / 1.5, 1 / 30), min(shown.max() * 1.5, 30))
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)
