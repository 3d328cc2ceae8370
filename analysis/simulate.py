"""Experiment design by simulation: synthetic losses from a known law, refitted many times, to measure each fitting
method's bias and the coverage of its 95% intervals before any compute is spent.

A design is a set of (N, D) points (a sweep file, or a built-in IsoFLOP grid centred on the law's true optimum times
an offset); a noise model draws losses around the law; each method (Chinchilla Approach 3 by the grid fit,
by variable projection, and IsoFLOP Approach 2) is refitted on every draw. For each parameter and for the
compute-optimal N_opt and loss at a target compute the report gives the mean estimate, bias, RMSE, CI coverage
and median CI width. Approach 2's parabola vertex is biased when the grid is off-centre or too wide (Open-Athena
2026): simulating such grids shows it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import fit, isoflop, laws

from testbed.config import ConfigError

LAWS = {"chinchilla": ("E", "A", "B", "alpha", "beta")}
METHODS = ("chinchilla", "chinchilla-vp", "isoflop")
NOISES = ("lognormal", "hetero", "seed")
EXAMPLE_PARAMS = "E=1.8,A=400,B=2000,alpha=0.34,beta=0.37"
# A repeat's Chinchilla fit starts from the true parameters plus this coarse 3^5 grid (243 starts), not the 4,500 of
# Hoffmann et al.: the full grid costs seconds per fit and finds the same basin on data drawn from the law; the
# coarse grid still catches a second basin far from the truth, should the noise create one.
COARSE_GRID = {"e": (-1.0, 0.0, 1.0), "a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0), "alpha": (0.0, 0.5, 1.0),
               "beta": (0.0, 0.5, 1.0)}
SEED_POINT_FRACTION = 0.25  # seed:SIGMA: per-point noise on top of the per-size seed effect, as a fraction of SIGMA
# a sweep file's runs as rows with params_total, tokens and flops (launch/sweep.py's describe(expand(path)))
ReadSweep = Callable[[Path], list[dict[str, Any]]]


def parse_params(law: str, text: str | None) -> dict[str, float]:
    """'E=1.8,A=400,...' -> the law's natural parameters; every one must be given, positive where it must be."""
    if law not in LAWS:
        raise ConfigError(f"--law: unknown law {law!r}; simulate supports {', '.join(LAWS)} (e.g. --law chinchilla "
                          f"--params {EXAMPLE_PARAMS})")
    need = LAWS[law]
    got: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        try:
            got[key.strip()] = float(val)
        except ValueError:
            raise ConfigError(f"--params: {item.strip()!r} is not NAME=NUMBER; pass e.g. {EXAMPLE_PARAMS}") from None
        if not eq:
            raise ConfigError(f"--params: {item.strip()!r} is not NAME=NUMBER; pass e.g. {EXAMPLE_PARAMS}")
    missing, extra = [k for k in need if k not in got], [k for k in got if k not in need]
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise ConfigError(f"--params: {what}; {law} takes {', '.join(need)}, e.g. {EXAMPLE_PARAMS}")
    bad = [k for k in need if not got[k] > 0]
    if bad:
        raise ConfigError(f"--params: {', '.join(bad)} must be > 0 (got {', '.join(f'{k}={got[k]}' for k in bad)})")
    return got


def parse_noise(text: str) -> tuple[str, float]:
    """'lognormal:0.01' -> ('lognormal', 0.01)."""
    kind, _, sig = (text or "").partition(":")
    try:
        sigma = float(sig)
    except ValueError:
        sigma = float("nan")
    if kind not in NOISES or not sigma >= 0:
        raise ConfigError(f"--noise: {text!r} is not KIND:SIGMA with KIND one of {', '.join(NOISES)} and SIGMA >= 0 "
                          "(the log-loss standard deviation); e.g. lognormal:0.01")
    return kind, sigma


def draw(loss: np.ndarray, N: np.ndarray, kind: str, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy losses. lognormal: L exp(sigma z) per point. hetero: sigma (N / N_min)^-0.5, larger models less noisy.
    seed: one draw per distinct N shared by its runs (a size's seed-to-seed effect, as when every run of a size
    uses the same init seed) plus per-point noise SEED_POINT_FRACTION * sigma; with one run per N it is lognormal."""
    z = rng.standard_normal(len(loss))
    if kind == "lognormal":
        return loss * np.exp(sigma * z)
    if kind == "hetero":
        return loss * np.exp(sigma * (N / N.min()) ** -0.5 * z)
    sizes, idx = np.unique(N, return_inverse=True)
    shared = rng.standard_normal(len(sizes))[idx]
    return loss * np.exp(sigma * shared + SEED_POINT_FRACTION * sigma * z)


def design_points(spec: str, q: dict[str, float], offset: float = 1.0,
                  read_sweep: ReadSweep | None = None) -> dict[str, Any]:
    """N, D, budget C (6ND units) per point, from 'isoflop:C1,C2:K:SPAN' (K sizes over SPAN decades centred on
    offset x the true N_opt(C)) or a sweep file (N = params_total, D = tokens, budgets grouped by exact FLOPs), whose
    runs read_sweep gives."""
    if not offset > 0:
        raise ConfigError(f"--offset: must be > 0 (a factor on the true N_opt), got {offset}")
    if spec.startswith("isoflop:"):
        parts = spec.split(":")
        try:
            budgets = [float(c) for c in parts[1].split(",") if c.strip()]
            k, span = int(parts[2]), float(parts[3])
            assert len(parts) == 4 and budgets and all(c > 0 for c in budgets) and k >= 1 and span >= 0
        except (ValueError, IndexError, AssertionError):
            raise ConfigError(f"--design: {spec!r} is not isoflop:C1,C2,...:K:SPAN (budgets in FLOPs > 0, K sizes "
                              "per budget, SPAN decades of N > 0), e.g. isoflop:1e18,1e19,1e20:7:1.5") from None
        n_opt = laws.chinchilla_optimum(q, np.array(budgets))["N_opt"] * offset
        grid = np.linspace(-span / 2, span / 2, k)
        N = (n_opt[:, None] * 10.0 ** grid[None, :]).ravel()
        C = np.repeat(budgets, k)
        return {"kind": "isoflop", "spec": spec, "offset": offset, "N": N, "D": C / (6 * N), "C": C}
    if offset != 1.0:
        raise ConfigError("--offset: applies to built-in isoflop: designs only; a sweep file fixes its sizes")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--design: no sweep file {spec!r}; pass a sweep YAML (e.g. configs/isoflop.yaml) or a "
                          "built-in grid isoflop:C1,C2,...:K:SPAN (e.g. isoflop:1e18,1e19,1e20:7:1.5)")
    if read_sweep is None:
        raise ConfigError(f"--design {spec!r}: a sweep file needs read_sweep (testbed simulate passes the sweep "
                          "expansion of launch/sweep.py); or use a built-in grid isoflop:C1,C2,...:K:SPAN")
    rows = read_sweep(path)
    N = np.array([r["params_total"] for r in rows], np.float64)
    D = np.array([r["tokens"] for r in rows], np.float64)
    exact = np.array([r["flops"] for r in rows], np.float64)
    labels = isoflop.group(exact, 0.05)  # budgets by exact FLOPs; each labelled by its mean 6ND so the truth matches
    C = np.array([np.exp(np.log(6 * N[labels == g] * D[labels == g]).mean()) for g in labels])
    return {"kind": "sweep", "spec": spec, "offset": 1.0, "N": N, "D": D, "C": C}


def coarse_starts(q: dict[str, float]) -> np.ndarray:
    """Start values for a Chinchilla refit of simulated data: the true raw parameters first, then COARSE_GRID."""
    truth = [np.log(q["E"]), np.log(q["A"]), np.log(q["B"]), q["alpha"], q["beta"]]
    law = dataclasses.replace(laws.CHINCHILLA, grid=COARSE_GRID)
    return np.vstack([np.array(truth)[None, :], law.starts()])


def _at_target(p: dict, target: float) -> dict[str, Any]:
    """N_opt and loss at the target compute from natural parameters (arrays for bootstrap samples)."""
    o = laws.chinchilla_optimum(p, target)
    return {"N_opt": o["N_opt"], "loss": o["loss"]}


def _fit_chinchilla(method: str, X, y, bootstrap: int, seed: int, starts, target: float) -> dict[str, Any]:
    """Estimates and CIs of alpha, beta, E, a, N_opt and loss at the target, and whether the fit converged."""
    if method == "chinchilla":
        r = fit.fit(laws.CHINCHILLA, X, y, bootstrap=bootstrap, seed=seed, starts=starts)
    else:
        from testbed.analysis.vp import fit_vp

        r = fit_vp(X, y, bootstrap=bootstrap, seed=seed)
    est = {k: r.params[k] for k in ("alpha", "beta", "E")} | {"a": r.derived["a"]} | {
        k: float(v) for k, v in _at_target(r.params, target).items()}
    ci = {}
    if r.boot:
        samples = {k: r.boot[k] for k in ("alpha", "beta", "E", "a")} | _at_target(r.boot, target)
        ci = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in samples.items()}
    return {"est": est, "ci": ci, "ok": bool(r.diagnostics["converged"])}


def _fit_isoflop(N, D, C, y, bootstrap: int, seed: int, target: float) -> dict[str, Any]:
    """Approach 2 by analysis/isoflop.py; the CI of N_opt at the target from the same within-budget resampling."""
    r = isoflop.isoflop_fit(pd.DataFrame({"N": N, "D": D, "C": C, "loss": y}))
    p = r["params"]
    est = {"a": p["a"], "N_opt": p["k_N"] * target ** p["a"]}
    ci = {}
    if bootstrap:
        rng, groups = np.random.default_rng(seed), [np.flatnonzero(C == c) for c in np.unique(C)]
        samples = []
        for _ in range(bootstrap):
            got = []
            for g in groups:
                s = rng.choice(g, size=len(g), replace=True)
                try:
                    bd = isoflop.budget(float(C[g[0]]), N[s], D[s], y[s])
                except (ArithmeticError, np.linalg.LinAlgError):  # a degenerate resample: no vertex
                    continue
                if bd["used"]:
                    got.append((bd["C"], bd["N_opt"]))
            if len(got) >= 2:
                a, kN = isoflop.power(*map(np.array, zip(*got, strict=True)))
                samples.append((a, kN * target ** a))
        if samples:
            s = np.array(samples)
            ci = {k: [float(np.percentile(s[:, i], 2.5)), float(np.percentile(s[:, i], 97.5))]
                  for i, k in enumerate(("a", "N_opt"))}
    return {"est": est, "ci": ci, "ok": bool(r["diagnostics"]["converged"])}


def _summary(truth: dict[str, float], recs: list[dict]) -> dict[str, Any]:
    """Per quantity: true value, mean, bias, relative bias, RMSE, coverage, median CI width over usable repeats."""
    ok = [r for r in recs if r is not None and r["ok"]]
    out: dict[str, Any] = {"repeats": len(recs), "failures": len(recs) - len(ok), "quantities": {}}
    for k in (ok[0]["est"] if ok else {}):
        t, e = truth[k], np.array([r["est"][k] for r in ok])
        cis = [r["ci"][k] for r in ok if k in r["ci"]]
        out["quantities"][k] = {
            "true": t, "mean": float(e.mean()), "bias": float(e.mean() - t), "rel_bias": float(e.mean() / t - 1),
            "rmse": float(np.sqrt(np.mean((e - t) ** 2))),
            "coverage": float(np.mean([lo <= t <= hi for lo, hi in cis])) if cis else None,
            "median_ci_width": float(np.median([hi - lo for lo, hi in cis])) if cis else None,
            "with_ci": len(cis)}
    return out


def simulate(law: str, params: dict[str, float], noise: str, design: str, *, offset: float = 1.0,
             repeats: int = 100, bootstrap: int = 100, methods: tuple[str, ...] = ("chinchilla", "isoflop"),
             target_flops: float | None = None, seed: int = 0, log: Callable[[str], None] | None = None,
             read_sweep: ReadSweep | None = None) -> dict[str, Any]:
    """Draw `repeats` noisy loss sets for the design, fit each method on each, summarise bias and coverage;
    read_sweep reads a sweep-file design (see design_points)."""
    t0 = time.perf_counter()
    q = parse_params(law, ",".join(f"{k}={v}" for k, v in params.items()))
    kind, sigma = parse_noise(noise)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(METHODS)} (comma-separated)")
    if repeats < 1 or bootstrap < 0:
        raise ConfigError(f"--repeats must be >= 1 and --bootstrap >= 0 (got {repeats}, {bootstrap})")
    d = design_points(design, q, offset, read_sweep)
    N, D, C = d["N"], d["D"], d["C"]
    if "isoflop" in methods:
        per = [np.unique(N[C == c]).size for c in np.unique(C)]
        if sum(n >= isoflop.MIN_DISTINCT for n in per) < 2:
            raise ConfigError(f"--methods isoflop: the design has {len(per)} budgets with {per} distinct sizes; "
                              f"Approach 2 needs >= 2 budgets with >= {isoflop.MIN_DISTINCT} sizes each (drop isoflop "
                              "from --methods or use an isoflop design)")
    target = float(target_flops) if target_flops else 10 * float(C.max())
    if not target > 0:
        raise ConfigError(f"--target-flops: must be > 0, got {target_flops}")
    loss = q["E"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]
    truth = {**{k: q[k] for k in ("alpha", "beta", "E")}, "a": q["beta"] / (q["alpha"] + q["beta"]),
             **{k: float(v) for k, v in _at_target(q, target).items()}}
    X, starts, rng = np.stack([N, D], 1), coarse_starts(q), np.random.default_rng(seed)
    recs: dict[str, list] = {m: [] for m in methods}
    errors: dict[str, list[str]] = {m: [] for m in methods}
    fit_s = dict.fromkeys(methods, 0.0)
    for i in range(repeats):
        y = draw(loss, N, kind, sigma, rng)
        for m in methods:
            t1 = time.perf_counter()
            try:
                rec = (_fit_isoflop(N, D, C, y, bootstrap, seed * 100003 + i, target) if m == "isoflop" else
                       _fit_chinchilla(m, X, y, bootstrap, seed * 100003 + i, starts, target))
            except (ConfigError, ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
                rec = None
                if len(errors[m]) < 3:
                    errors[m].append(str(e)[:200])
            recs[m].append(rec)
            fit_s[m] += time.perf_counter() - t1
        if log and (i + 1) % max(1, repeats // 10) == 0:
            log(f"simulate: {i + 1}/{repeats} repeats ({time.perf_counter() - t0:.0f}s)")
    out_methods = {}
    for m in methods:
        s = _summary(truth, recs[m])
        s["fit_s_per_repeat"] = round(fit_s[m] / repeats, 3)
        if errors[m]:
            s["errors"] = errors[m]
        out_methods[m] = s
    budgets = sorted({float(c) for c in C})
    return {"law": law, "params": q, "noise": {"kind": kind, "sigma": sigma},
            "design": {"kind": d["kind"], "spec": d["spec"], "offset": d["offset"], "points": len(N),
                       "budgets": budgets, "N_range": [float(N.min()), float(N.max())]},
            "target_flops": target, "truth": truth, "repeats": repeats, "bootstrap": bootstrap, "seed": seed,
            "starts": "true parameters + coarse 3^5 grid (chinchilla)", "methods": out_methods,
            "elapsed_s": round(time.perf_counter() - t0, 1)}


def format_text(out: dict) -> str:
    """A table: one row per method and quantity."""
    d = out["design"]
    lines = [f"simulate {out['law']} {', '.join(f'{k}={v:g}' for k, v in out['params'].items())}; noise "
             f"{out['noise']['kind']}:{out['noise']['sigma']:g}; design {d['spec']} (offset {d['offset']:g}, "
             f"{d['points']} points); target C={out['target_flops']:.3g}; {out['repeats']} repeats, bootstrap "
             f"{out['bootstrap']}",
             f"{'method':14s} {'quantity':9s} {'true':>11s} {'mean':>11s} {'rel bias':>9s} {'rmse':>10s} "
             f"{'coverage':>8s} {'med CI width':>12s}"]
    for m, s in out["methods"].items():
        for k, v in s["quantities"].items():
            cov = "-" if v["coverage"] is None else f"{v['coverage']:.2f}"
            w = "-" if v["median_ci_width"] is None else f"{v['median_ci_width']:.4g}"
            lines.append(f"{m:14s} {k:9s} {v['true']:11.4g} {v['mean']:11.4g} {v['rel_bias']:+9.2%} "
                         f"{v['rmse']:10.3g} {cov:>8s} {w:>12s}")
        lines.append(f"{m:14s} failures {s['failures']}/{s['repeats']}, {s['fit_s_per_repeat']:.2f}s per repeat"
                     + (f"; e.g. {s['errors'][0]}" if s.get("errors") else ""))
    return "\n".join(lines)
