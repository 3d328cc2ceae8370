"""`testbed compare A B --law chinchilla`: the same law fitted to two sweeps, their differences with bootstrap CIs.

Two recipes (parametrizations, data sets, schedules) are compared where it matters: the compute-optimal loss
L*(C) = min over N D = C/6 of the fitted law, at every compute, and the compute where the two curves cross. Each
sweep is bootstrapped over its own runs; resample k of A is paired with resample k of B (independent draws), so
the differences' percentile intervals carry both fits' uncertainty ("Scaling Laws for Robust Comparison").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from testbed.analysis import laws, plots, registry

from testbed.config import ConfigError

C_GRID = np.geomspace(1e15, 1e27, 241)  # where L*(C) is compared and crossings are searched (FLOPs)


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


def compare(a: str | Path, b: str | Path, law: str = "chinchilla", bootstrap: int = 200, seed: int = 0,
            columns: dict[str, str] | None = None, filter: str | None = None) -> tuple[dict, dict]:
    """JSON: both fits, parameter differences, L*(C) difference across compute, the crossover and its CI."""
    if law not in ("chinchilla", "chinchilla-vp"):
        raise ConfigError(f"--law: compare needs a law with a compute-optimal loss (chinchilla, chinchilla-vp), "
                          f"got '{law}'")
    if bootstrap < 20:
        raise ConfigError(f"--bootstrap: compare needs >= 20 resamples for its intervals, got {bootstrap}")
    fits, spans = {}, []
    for name, data, s in (("a", a, seed), ("b", b, seed + 1)):
        out, objs = registry.run(law, data, columns=columns, filter=filter, bootstrap=bootstrap, seed=s)
        fits[name] = (out, objs["result"])
        rows = objs["fit_rows"]
        c6 = 6 * rows["N"].to_numpy(float) * rows["D"].to_numpy(float)
        spans.append((float(c6.min()), float(c6.max())))
    data_range = [max(lo for lo, _ in spans), min(hi for _, hi in spans)]  # compute both sweeps cover
    (out_a, ra), (out_b, rb) = fits["a"], fits["b"]
    k = min(len(next(iter(ra.boot.values()))), len(next(iter(rb.boot.values()))))
    diff = {}
    for p in ra.params:
        d = rb.boot[p][:k] - ra.boot[p][:k]
        diff[p] = {"value": rb.params[p] - ra.params[p], "ci": [float(np.percentile(d, 2.5)),
                                                                float(np.percentile(d, 97.5))]}
    la, lb = _optimal_loss(ra.params, C_GRID), _optimal_loss(rb.params, C_GRID)
    boot_a = _optimal_loss({p: ra.boot[p][:k] for p in ra.params}, C_GRID)
    boot_b = _optimal_loss({p: rb.boot[p][:k] for p in rb.params}, C_GRID)
    bd = boot_b - boot_a
    lo, hi = np.percentile(bd, 2.5, axis=0), np.percentile(bd, 97.5, axis=0)
    cross = _crossings(lb - la, C_GRID)
    boot_cross = [c[0] for c in (_crossings(row, C_GRID) for row in bd) if c]
    crossover: dict[str, Any] = {"C": cross[0] if cross else None, "all": cross,
                                 "fraction_of_resamples_crossing": len(boot_cross) / k,
                                 "ci": [float(np.percentile(boot_cross, 2.5)), float(np.percentile(boot_cross, 97.5))]
                                 if len(boot_cross) >= 10 else None}
    if cross:
        crossover["extrapolated"] = not data_range[0] <= cross[0] <= data_range[1]
    every = max(1, len(C_GRID) // 12)
    out = {"law": law, "a": {"data": str(a), **_brief(out_a)}, "b": {"data": str(b), **_brief(out_b)},
           "diff_b_minus_a": diff,
           "optimal_loss": [{"C": float(c), "a": float(x), "b": float(y), "b_minus_a": float(y - x),
                             "ci": [float(u), float(v)]}
                            for c, x, y, u, v in list(zip(C_GRID, la, lb, lo, hi, strict=True))[::every]],
           "crossover": crossover, "bootstrap": k,
           "data_compute_range": data_range,
           "note": "C: training compute in FLOPs (C = 6ND); a, b: each fit's compute-optimal loss L*(C)"}
    return out, {"C": C_GRID, "range": data_range, "a": la, "b": lb, "lo": lo, "hi": hi,
                 "band_a": np.percentile(boot_a, [2.5, 97.5], 0), "band_b": np.percentile(boot_b, [2.5, 97.5], 0),
                 "names": (str(a), str(b))}


def format_text(out: dict) -> str:
    """Parameter differences and the crossover, for a terminal."""
    lines = [f"compare {out['law']}: B = {out['b']['data']} minus A = {out['a']['data']} "
             f"({out['bootstrap']} resamples)"]
    for p, d in out["diff_b_minus_a"].items():
        lines.append(f"  {p:>6}: A {out['a']['params'][p]:.5g}  B {out['b']['params'][p]:.5g}  B-A {d['value']:+.4g} "
                     f"[{d['ci'][0]:+.4g}, {d['ci'][1]:+.4g}]")
    c = out["crossover"]
    if c["C"] is None:
        lines.append(f"  L*(C) curves do not cross over 1e15..1e27 FLOPs ({c['fraction_of_resamples_crossing']:.0%} "
                     "of resamples cross)")
    else:
        ci = f" [{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]" if c["ci"] else ""
        lo, hi = out["data_compute_range"]
        where = (f"; EXTRAPOLATED beyond the data's compute ({lo:.2g}..{hi:.2g})" if c.get("extrapolated")
                 else " (inside the data's compute range)")
        lines.append(f"  L*(C) curves cross at C = {c['C']:.3g} FLOPs{ci} "
                     f"({c['fraction_of_resamples_crossing']:.0%} of resamples cross){where}")
    return "\n".join(lines)


def _brief(out: dict) -> dict:
    return {k: out[k] for k in ("params", "ci", "n_points", "excluded") if k in out} | {
        "converged": out["diagnostics"]["converged"]}


def plot(curves: dict, out: dict, path: str | Path) -> None:
    """L*(C) of both fits with 95% bands, and their difference with its band; the crossover marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C = curves["C"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, color in (("a", "C0"), ("b", "C1")):
        ax.plot(C, curves[key], color=color, label=Path(curves["names"][key == "b"]).name)
        ax.fill_between(C, *curves[f"band_{key}"], color=color, alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="compute-optimal loss L*(C)")
    ax.legend(fontsize=8)
    ax2.plot(C, curves["b"] - curves["a"], color="k")
    ax2.fill_between(C, curves["lo"], curves["hi"], color="k", alpha=0.15)
    ax2.axhline(0, color="grey", lw=0.8)
    if out["crossover"]["C"] is not None:
        ax2.axvline(out["crossover"]["C"], color="r", ls="--", lw=0.8, label="crossover")
        ax2.legend(fontsize=8)
    ax2.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="L*_B - L*_A")
    for axis in (ax, ax2):  # the compute both sweeps measured; outside it the curves are extrapolations
        axis.axvspan(*curves["range"], color="grey", alpha=0.1, lw=0)
    fig.tight_layout()
    plots.save(fig, path)
    plt.close(fig)
