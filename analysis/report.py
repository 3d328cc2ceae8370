"""`testbed fit LAW DATA`: load -> usable points -> fit (+ bootstrap, + held-out check) -> JSON and a figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import fit as F
from testbed.analysis import laws
from testbed.analysis import load as LD

from testbed.config import ConfigError

# compute budgets at which derived allocations are reported (Chinchilla; C in FLOPs)
REPORT_C = (1e18, 1e20, 1e22, 1e24)


def _law(name: str) -> laws.Law:
    from testbed.analysis import farseer, vp

    known = {**laws.LAWS, vp.LAW.name: vp.LAW, farseer.LAW.name: farseer.LAW}
    if name not in known:
        raise ConfigError(f"LAW: unknown '{name}'; choose one of {', '.join([*known, *TABLE_FITS])}")
    return known[name]


def _usable_curves(data, columns, filter) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-step curves of the runs fits may use, and the runs left out by reason (a curves file: none)."""
    cur = LD.curves(data, columns=columns, filter=filter)
    if "ok" not in cur.columns:
        return cur, dict.fromkeys(LD.REASONS, 0)
    return cur[cur["ok"].astype(bool)].copy(), LD.usable(cur.drop_duplicates("run_id"))[1]


def _noting(e: ConfigError, excluded: dict[str, int]) -> ConfigError:
    """A fit's refusal (e.g. too few points) with the runs left out before fitting, and why."""
    note = LD.describe_exclusions(excluded)
    return ConfigError(f"{e}; {note} before fitting") if note else e


def _isoflop(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Approach 2 on one row per run; budgets from the exact FLOPs C (or a mapped budget column)."""
    from testbed.analysis import isoflop

    rows, excluded = LD.usable(LD.load(data, columns=columns, filter=filter))
    try:
        out = isoflop.isoflop_fit(rows, bootstrap=bootstrap, seed=seed)
    except ConfigError as e:
        raise _noting(e, excluded) from None
    return {**out, "excluded": excluded}, {"kind": "isoflop", "rows": rows}


def _envelope(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Approach 1 on full curves: runs that did not complete are left out."""
    from testbed.analysis import isoflop

    cur, excluded = _usable_curves(data, columns, filter)
    out = isoflop.envelope_fit(cur, bootstrap=bootstrap, seed=seed)
    return {**out, "excluded": excluded}, {"kind": "envelope", "curves": cur}


def _annealing(data, columns, filter, bootstrap, seed, holdout=None) -> tuple[dict, dict]:
    """The LR-annealing law on full curves; --holdout selects runs whose curves are predicted, not fitted."""
    from testbed.analysis import annealing

    cur, excluded = _usable_curves(data, columns, filter)
    held: list[str] = []
    if holdout:
        held = sorted(set(cur.loc[_holdout_mask(cur, holdout), "run_id"]))
    fit_ids = sorted(set(cur["run_id"]) - set(held))
    out = annealing.fit_annealing(cur, fit_runs=fit_ids)
    if held:
        pred = annealing.predict_runs(out, cur, held)
        errs = [p["mean_abs_rel_error"] for p in pred.values()]
        out["holdout"] = {"expr": holdout, "runs": pred, "mean_abs_rel_error": float(np.mean(errs))}
    return {**out, "excluded": excluded}, {"kind": "annealing", "curves": cur, "held": held}


def _overtrain(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Gadre et al.'s L(C, M), M = D / N, C = 6ND."""
    from testbed.analysis import overtrain

    rows, excluded = LD.usable(LD.load(data, columns=columns, filter=filter))
    return {**overtrain.fit_overtrain(rows, bootstrap, seed=seed), "excluded": excluded}, {"kind": "overtrain",
                                                                                            "rows": rows}


def _downstream(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Err = eps - k exp(-gamma L): needs an `err` column (--columns err=COL)."""
    from testbed.analysis import overtrain

    rows, excluded = LD.usable(LD.load(data, columns=columns, filter=filter))
    return {**overtrain.fit_downstream(rows, bootstrap, seed=seed), "excluded": excluded}, {"kind": "downstream",
                                                                                             "rows": rows}


def _steplaw(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Step Law on the near-optimal band; a sweep's lr, batch (sequences x seq_len) and non-embedding N."""
    from testbed.analysis import hplaws

    rows, excluded = LD.usable(LD.load(data, columns=columns, filter=filter))
    if "optim.lr" in rows.columns:  # a testbed sweep directory
        kw = {"lr_col": "optim.lr", "bs_col": "train.batch_size", "seq_len": "data.seq_len", "n_col": "N_nonembed"}
    else:
        kw = {"lr_col": "lr", "bs_col": "bs", "n_col": "N", **({"seq_len": "seq_len"} if "seq_len" in rows.columns
                                                                 else {})}
    out = hplaws.fit_steplaw(rows, bootstrap=bootstrap, seed=seed, **kw)
    table = hplaws.steplaw_table(rows, kw["n_col"], kw["lr_col"], kw["bs_col"], "loss", kw.get("seq_len"))[0]
    return {**out, "excluded": excluded}, {"kind": "steplaw", "table": table}




def _critbatch(data, columns, filter, bootstrap, seed) -> tuple[dict, dict]:
    """Critical batch size from curves of runs at several batch sizes (tokens: batch x seq_len, or a bs column)."""
    from testbed.analysis import critbatch

    cur, excluded = _usable_curves(data, columns, filter)
    if {"train.batch_size", "data.seq_len"} <= set(cur.columns):
        cur["B"] = cur["train.batch_size"] * cur["data.seq_len"]
        col = "B"
    else:
        col = "bs"
    out = critbatch.fit_critical_batch(cur, batch_col=col, bootstrap=bootstrap, seed=seed)
    return {**out, "excluded": excluded}, {"kind": "critbatch"}


# fits over a table (not one Law through analysis/fit.py): name -> (data, columns, filter, bootstrap, seed)
TABLE_FITS = {"isoflop": _isoflop, "envelope": _envelope, "annealing": _annealing, "overtrain": _overtrain,
              "downstream": _downstream, "steplaw": _steplaw, "critbatch": _critbatch}


def _fit(law: laws.Law, X: np.ndarray, y: np.ndarray, bootstrap: int, seed: int) -> F.FitResult:
    if law.name == "chinchilla-vp":
        from testbed.analysis import vp

        return vp.fit_vp(X, y, bootstrap=bootstrap, seed=seed)
    if law.name == "farseer":
        from testbed.analysis import farseer

        return farseer.fit_farseer(X, y, bootstrap=bootstrap, seed=seed)
    return F.fit(law, X, y, bootstrap=bootstrap, seed=seed)


def _xy(law: laws.Law, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in law.inputs if c not in df.columns]
    if missing:
        raise ConfigError(f"fit {law.name}: the data has no {', '.join(missing)} column; map one with --columns "
                          f"{missing[0]}=COLUMN (the law reads {', '.join(law.inputs)} and loss)")
    return df[list(law.inputs)].to_numpy(np.float64), df["loss"].to_numpy(np.float64)


def _holdout_mask(df: pd.DataFrame, expr: str) -> np.ndarray:
    try:
        mask = df.eval(expr)
    except Exception as e:  # pandas raises many types for a bad expression
        raise ConfigError(f"--holdout {expr!r}: cannot evaluate ({type(e).__name__}: {e}); e.g. --holdout "
                          "\"C > 1e21\"; " + LD.FILTER_HELP) from None
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ConfigError(f"--holdout {expr!r}: selects {int(mask.sum())} of {len(mask)} points; it must leave "
                          "some to fit and some to predict")
    return mask


def _holdout_errors(law: laws.Law, res: F.FitResult, held: pd.DataFrame) -> dict[str, Any]:
    """Relative error of the fitted law on held-out rows, per point and overall."""
    Xh, yh = _xy(law, held)
    pred = res.predict(Xh)
    rel = (pred - yh) / yh
    return {"n_points": len(yh), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "max_abs_rel_error": float(np.max(np.abs(rel))),
            "points": [{**{c: float(v) for c, v in zip(law.inputs, x, strict=True)}, "loss": float(o),
                        "pred": float(p), "rel_error": float(r)}
                       for x, o, p, r in zip(Xh, yh, pred, rel, strict=True)]}


def _derived_at(law: laws.Law, res: F.FitResult) -> dict[str, Any]:
    """N_opt, D_opt, tokens per parameter and loss at REPORT_C, with bootstrap percentile CIs when resampled."""
    if law.inputs != laws.CHINCHILLA.inputs or law.raw != laws.CHINCHILLA.raw:
        return {}
    out = {}
    for c in REPORT_C:
        point = {k: float(v) for k, v in laws.chinchilla_optimum(res.params, c).items()}
        if res.boot:
            boot = laws.chinchilla_optimum({k: res.boot[k] for k in res.params}, c)
            point["ci"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items()}
        out[f"C={c:.0e}"] = point
    return out


def _predictions(law: laws.Law, res: F.FitResult, text: str | None) -> list[dict] | None:
    """--predict 'N=1e9,D=2e10;N=3e9,D=6e10': the law's loss at each point (+ a bootstrap CI)."""
    if not text:
        return None
    out = []
    for item in text.split(";"):
        try:
            point = {k.strip(): float(v) for k, v in (kv.split("=", 1) for kv in item.split(","))}
        except ValueError:
            point = {}
        if set(point) != set(law.inputs):
            raise ConfigError(f"--predict {item!r}: give {', '.join(f'{k}=VALUE' for k in law.inputs)} per point, "
                              f"points separated by ';' (e.g. --predict \"N=1e9,D=2e10\")")
        X = np.array([[point[k] for k in law.inputs]])
        row = {**point, "loss": float(res.predict(X)[0])}
        if res.boot_raw is not None:
            boot = F.predict_many(law, res.boot_raw, X)[:, 0]
            row["ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
        out.append(row)
    return out


def run(law_name: str, data: str | Path, columns: dict[str, str] | None = None, filter: str | None = None,
        bootstrap: int = 0, holdout: str | None = None, seed: int = 0, predict: str | None = None
        ) -> tuple[dict, dict]:
    """The fit's JSON (law, params, ci, derived, diagnostics, n_points, excluded, holdout) and objects to plot."""
    if law_name == "annealing":
        if bootstrap:
            raise ConfigError("--bootstrap: not available for annealing yet (consecutive steps of one curve are not "
                              "independent points); use --holdout to check it on other runs' curves")
        return _annealing(data, columns, filter, bootstrap, seed, holdout)
    if predict and law_name in TABLE_FITS:
        raise ConfigError(f"--predict: only for chinchilla, chinchilla-vp, kaplan and farseer, not {law_name}")
    if law_name in TABLE_FITS:
        if holdout:
            raise ConfigError(f"--holdout: not supported for {law_name} (it fits power laws through per-budget "
                              "optima); use chinchilla or kaplan for held-out checks")
        return TABLE_FITS[law_name](data, columns, filter, bootstrap, seed)
    law = _law(law_name)
    df = LD.load(data, columns=columns, filter=filter)
    rows, excluded = LD.usable(df)
    fit_rows, held = rows, None
    if holdout:
        mask = _holdout_mask(rows, holdout)
        fit_rows, held = rows[~mask].reset_index(drop=True), rows[mask].reset_index(drop=True)
    X, y = _xy(law, fit_rows)
    try:
        res = _fit(law, X, y, bootstrap, seed)
    except ConfigError as e:
        raise _noting(e, excluded) from None
    out: dict[str, Any] = {
        "law": law.name, "formula": law.formula, "params": res.params,
        "ci": {k: v for k, v in (res.ci or {}).items() if k in res.params or k in res.derived} or None,
        "derived": {**{k: v for k, v in res.derived.items() if k != "k"}, **_derived_at(law, res)},
        "diagnostics": res.diagnostics, "n_points": res.n_points, "excluded": excluded,
        "data": {"source": str(data), "derived_columns": df.attrs.get("derived", []), "filter": filter},
    }
    if predict:
        out["predict"] = _predictions(law, res, predict)
    if held is not None:
        out["holdout"] = {"expr": holdout, **_holdout_errors(law, res, held)}
        if law.name == "farseer":  # the paper's comparison: Chinchilla fitted to the same points, same held-out set
            base = _fit(laws.CHINCHILLA, X, y, 0, seed)
            out["holdout"]["baseline"] = {"law": "chinchilla", "params": base.params,
                                          "converged": base.diagnostics["converged"],
                                          **_holdout_errors(laws.CHINCHILLA, base, held)}
    return out, {"kind": "law", "law": law, "result": res, "fit_rows": fit_rows, "held": held}


def _plot_optima(objs: dict, out: dict, path: str | Path) -> None:
    """IsoFLOP (Chinchilla Fig. 3): loss vs N per budget with the fitted parabolas and their vertices, N_opt(C) as an
    inset; envelope: the N_opt(C) points and the power law."""
    import matplotlib.pyplot as plt

    pts = out["derived"]["budgets" if objs["kind"] == "isoflop" else "bins"]
    good = [b for b in pts if b.get("used", True)]
    fig, ax = plt.subplots(figsize=(7, 4.8) if objs["kind"] == "isoflop" else (5.5, 4))
    if objs["kind"] == "isoflop":
        rows, cmap = objs["rows"], plt.get_cmap("viridis")
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
        ax = ax.inset_axes([0.6, 0.6, 0.37, 0.36])
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
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _plot_critbatch(out: dict, path: str | Path) -> None:
    """B_crit per target loss (hollow: outside the sampled batch sizes) and B_crit(L) = B* / L^(1/alpha_B)."""
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=130)
    plt.close(fig)


def format_text(out: dict) -> str:
    """The JSON's headline as a few lines for a terminal."""
    ci = out.get("ci") or {}
    lines = [f"{out['law']}: {out['formula']}  ({out['n_points']} points)"]
    for k, v in out["params"].items():
        lines.append(f"  {k:>8} = {v:.6g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""))
    for k, v in out["derived"].items():
        if isinstance(v, float):
            lines.append(f"  {k:>8} = {v:.6g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""))
    d = out["diagnostics"]
    extra = "".join(f" {k}={d[k]:.3g}" for k in ("grad_norm", "hessian_condition") if k in d)
    lines.append(f"  converged={d['converged']}{extra} fit {d.get('grid_fit_s', d.get('fit_s', '-'))}s"
                 + (f", bootstrap {d['bootstrap']['fit_s']}s" if "bootstrap" in d else ""))
    if "warning" in d:
        lines.append(f"  WARNING: {d['warning']}")
    note = LD.describe_exclusions(out["excluded"])
    if note:
        lines.append(f"  {note}")
    if "holdout" in out:
        h = out["holdout"]
        if "runs" in h:  # annealing: whole curves predicted
            lines.append(f"  held out {len(h['runs'])} run(s) ({h['expr']}): curves predicted with mean |rel error| "
                         f"{h['mean_abs_rel_error']:.3%}")
        else:
            lines.append(f"  held out {h['n_points']} ({h['expr']}): mean |rel error| "
                         f"{h['mean_abs_rel_error']:.3%}, max {h['max_abs_rel_error']:.3%}")
            if "baseline" in h:
                b = h["baseline"]
                lines.append(f"  {b['law']} on the same points: mean |rel error| {b['mean_abs_rel_error']:.3%}, "
                             f"max {b['max_abs_rel_error']:.3%}")
    return "\n".join(lines)


def jsonable(v: Any) -> Any:
    """NaN/inf as strings, numpy scalars as floats: strict JSON."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def plot(objs: dict, out: dict, path: str | Path) -> None:
    """Loss vs compute (6ND) coloured by N, the fitted law's curves at each N, held-out points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if objs["kind"] in ("isoflop", "envelope"):
        return _plot_optima(objs, out, path)
    if objs["kind"] == "annealing":
        from testbed.analysis import annealing

        return annealing.plot_annealing(out, objs["curves"], objs["held"], path)
    if objs["kind"] == "critbatch":
        return _plot_critbatch(out, path)
    if objs["kind"] in ("overtrain", "downstream", "steplaw"):  # analysis/figures.py: Gadre et al. 2024, Step Law
        from testbed.analysis import figures

        if objs["kind"] == "steplaw":
            return figures.lr_landscape(objs["table"], path, params=out["params"], band=out["diagnostics"]["band"])
        return getattr(figures, objs["kind"])(objs["rows"], out, path)

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
    fig.savefig(path, dpi=130)
    plt.close(fig)
