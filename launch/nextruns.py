"""`testbed plan SWEEP_DIR`: the next runs to train, chosen from the current Chinchilla fit to shrink the interval of
what the researcher predicts at a target compute (the loss at the compute-optimal point, or N_opt), per FLOP.

Candidates are shapes of the sweep's own ladder (its widths and a few wider rungs, at its depth, head size and FFN
ratio) times token counts (a budget grid from its smallest run up to the per-run cap), each a full config: the
sweep's largest run with the shape and steps changed. analysis/design.py scores them; the picks are written as a
sweep file (a `zip` of the shape keys and steps) that `testbed sweep NEXT.yaml --out SWEEP_DIR` trains into the
same directory. `--progressive` repeats fit -> plan -> train until the interval is narrower than `--threshold` or
the budget is spent; SWEEP_DIR/plan/ keeps each round's sweep file and history.jsonl (what `testbed report` shows).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from testbed.analysis.design import fmt_width

from testbed import config, runstore
from testbed.config import ConfigError

Log = Callable[[str], None]
EXTRA_RUNGS = (1.5, 2.0, 3.0)  # default candidate widths beyond the sweep's widest, as multiples of it
BUDGETS_PER_OCTAVE = 2  # candidate budgets: 2 per factor of 2 of FLOPs
SHAPE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.head_dim", "model.d_ff")
ROUND_GROWTH = 0.25  # progressive: a round may spend this fraction of the FLOPs already in the sweep (as simulated)


def _fit(sweep_dir: Path, target: str, flops: float, bootstrap: int, seed: int):
    """The Chinchilla fit of the sweep (bootstrap CIs), its usable rows and the linearised design state."""
    from testbed.analysis import design, registry

    out, objs = registry.run("chinchilla", sweep_dir, bootstrap=bootstrap, seed=seed)
    rows, res = objs["fit_rows"], objs["result"]
    N, D, y = (rows[c].to_numpy(np.float64) for c in ("N", "D", "loss"))
    st = design.state(res.raw, N, D, y, target, flops, res.boot_raw)
    log_ci = design.boot_interval(res.boot_raw, target, flops)
    return out, rows, st, None if log_ci is None else [float(np.exp(v)) for v in log_ci]


def _ladder_family(rows) -> dict[str, Any]:
    """Depth (fixed, or an aspect ratio when depths vary), head size and FFN ratio of the sweep's shapes."""
    w = rows["model.d_model"].to_numpy(np.int64)
    depth = rows["model.n_layers"].to_numpy(np.int64)
    heads = rows["model.n_heads"].to_numpy(np.int64)
    ffn = (rows["model.d_ff"] / rows["model.d_model"]).dropna() if "model.d_ff" in rows.columns else []
    ratio = int(round(float(np.median(ffn)))) if len(ffn) else 4  # d_ff null: the model's default 4 x d_model
    fam = {"head_dim": int(np.median(w // heads)), "ffn_ratio": max(1, ratio)}
    if np.unique(depth).size == 1:
        fam["depth"] = int(depth[0])
    else:
        fam["aspect_ratio"] = float(np.median(w / depth))
    return fam


def _widths(rows, fam: dict, widths: list[int] | None) -> list[int]:
    if widths:
        bad = [w for w in widths if w <= 0 or w % fam["head_dim"]]
        if bad:
            raise ConfigError(f"--widths: {bad} are not positive multiples of the sweep's head size "
                              f"{fam['head_dim']}; candidates keep its head size (muP-friendly ladder)")
        return sorted(set(widths))
    have = sorted({int(v) for v in rows["model.d_model"]})
    hd = fam["head_dim"]
    more = {max(hd, int(round(have[-1] * f / hd)) * hd) for f in EXTRA_RUNGS}
    return sorted(set(have) | more)


def candidates(sweep_dir: Path, rows, cap: float, widths: list[int] | None = None) -> list[dict]:
    """Every ladder shape x budget (2 per octave, from the smallest run's FLOPs to cap) as a validated config with
    its exact N, D and FLOPs; runs already in the sweep directory, runs shorter than its shortest and runs outside
    its tokens-per-parameter range (widened by design.RATIO_MARGIN) are left out."""
    from testbed.analysis import design
    from testbed.launch import sweep

    from testbed import shapes

    base_row = rows.loc[rows["N"].idxmax()]
    base = config.to_dict(config.load(runstore.RunDir(base_row["run_dir"]).config_path))
    fam = _ladder_family(rows)
    min_steps = int(rows["steps"].min()) if rows["steps"].notna().all() else 1
    lo = float(rows["C"].min())
    budgets = lo * 2.0 ** (np.arange(0, np.log2(max(cap, lo) / lo) + 1e-9, 1 / BUDGETS_PER_OCTAVE))
    if cap > budgets[-1] * (1 + 1e-6):
        budgets = np.r_[budgets, cap]
    ratio = (rows["D"] / rows["N"]).to_numpy(np.float64)
    r_lo, r_hi = ratio.min() / design.RATIO_MARGIN, ratio.max() * design.RATIO_MARGIN
    existing = set(rows["run_id"])
    out = []
    for width in _widths(rows, fam, widths):
        try:
            shape = shapes.ladder(width, **fam)
        except ValueError as e:
            raise ConfigError(f"--widths: {e}") from None
        raw = copy.deepcopy(base)
        raw["model"].update(shape)
        probe = config.from_dict(raw)  # the base run's steps: valid for this shape too
        step_flops = shapes.count(probe).flops_per_token * probe.tokens_per_step
        for b in budgets:
            steps = int(round(b / step_flops))
            if steps < max(min_steps, 1, probe.optim.warmup_steps):
                continue
            raw_b = copy.deepcopy(raw)
            raw_b["train"]["steps"] = steps
            cfg = config.from_dict(raw_b)
            rid = sweep.run_id(cfg)
            if rid in existing:
                continue
            acc = shapes.count(cfg)
            if not r_lo <= steps * cfg.tokens_per_step / acc.params_total <= r_hi:
                continue
            out.append({"run_id": rid, "cfg": cfg, "width": width, "n_layers": shape["n_layers"], "steps": steps,
                        "N": float(acc.params_total), "D": float(steps * cfg.tokens_per_step),
                        "flops": float(steps * step_flops)})
    return out


def sweep_file(sweep_dir: Path, picks: list[dict], header: list[str]) -> tuple[str, dict]:
    """The picks as a sweep file: the largest run's config with the shape keys and steps zipped."""
    base = config.to_dict(picks[0]["cfg"])
    zipped = {k: [] for k in (*SHAPE_KEYS, "train.steps")}
    for p in picks:
        d = config.to_dict(p["cfg"])
        for k in zipped:
            sec, key = k.split(".")
            zipped[k].append(d[sec][key])
    spec = {"name": f"plan-{sweep_dir.name}", "description": "testbed plan: next runs for " + str(sweep_dir),
            "config": base, "zip": zipped}
    text = "\n".join(f"# {h}" for h in header) + "\n" + yaml.safe_dump(spec, sort_keys=False)
    return text, spec


def plan(sweep_dir: str | Path, *, target_flops: float, target: str = "loss", budget: float | None = None,
         k: int = 4, widths: list[int] | None = None, bootstrap: int = 200, seed: int = 0,
         stop_width: float | None = None, out: str | Path | None = None, fitted=None) -> dict[str, Any]:
    """Fit, score the candidates, pick up to k within the budget; write the sweep file when out is given."""
    from testbed.analysis import design
    from testbed.launch import sweep

    sweep_dir = Path(sweep_dir)
    if target not in design.TARGETS:
        raise ConfigError(f"--target: unknown {target!r}; choose {' or '.join(design.TARGETS)}")
    if not (target_flops and target_flops > 0):
        raise ConfigError(f"--target-flops: must be > 0 FLOPs (the compute you want to predict at), got "
                          f"{target_flops}")
    if k < 1:
        raise ConfigError(f"--k: must be >= 1 runs, got {k}")
    if not sweep_dir.is_dir():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is not a directory; pass the directory `testbed sweep` wrote")
    if budget is not None and not budget > 0:
        raise ConfigError(f"--budget: must be > 0 FLOPs (default: the FLOPs already in the sweep), got {budget}")
    t0 = time.perf_counter()
    fit_out, rows, st, ci = fitted or _fit(sweep_dir, target, target_flops, bootstrap, seed)
    spent = float(rows["C"].sum())
    budget = spent if budget is None else float(budget)
    cands = candidates(sweep_dir, rows, min(budget, target_flops), widths)
    picks = design.select(st, [c["N"] for c in cands], [c["D"] for c in cands], [c["flops"] for c in cands], k, budget,
                          stop_width)
    proposals = []
    for p in picks:
        c = cands[p["index"]]
        proposals.append({"run_id": c["run_id"], "d_model": c["width"], "n_layers": c["n_layers"],
                          "steps": c["steps"], "N": c["N"], "D": c["D"], "tokens_per_param": c["D"] / c["N"],
                          **{k_: p[k_] for k_ in ("flops", "width_before", "width_after", "width_reduction",
                                                  "reduction_per_flop")},
                          "cfg": c["cfg"]})
    what = "loss at the compute-optimal point" if target == "loss" else "N_opt"
    result = {
        "sweep_dir": str(sweep_dir), "target": target, "target_flops": target_flops, "what": what,
        "estimate": float(np.exp(st.estimate)), "ci": ci, "width": float(st.width()),
        "linear_width": float(st.width() / st.scale), "bootstrap_over_linear": st.scale, "sigma": st.sigma,
        "runs": len(rows), "flops_in_sweep": spent, "budget": budget, "k": k, "candidates": len(cands),
        "proposals": proposals, "planned_flops": float(sum(p["flops"] for p in proposals)),
        "predicted_width": proposals[-1]["width_after"] if proposals else float(st.width()),
        "fit": {"params": fit_out["params"], "converged": fit_out["diagnostics"]["converged"]},
    }
    if out is not None and proposals:
        header = [f"testbed plan {sweep_dir} --target {target} --target-flops {target_flops:.3g}: {len(proposals)} "
                  f"runs, {result['planned_flops']:.3g} FLOPs of a {budget:.3g} budget",
                  f"{what} at C = {target_flops:.3g}: {result['estimate']:.4g}, 95% interval width "
                  f"{fmt_width(result['width'], target)} now, {fmt_width(result['predicted_width'], target)} "
                  "predicted after these runs"]
        header += [_explain(p, target) for p in proposals]
        header += [f"train: testbed sweep {out} --out {sweep_dir}"]
        text, spec = sweep_file(sweep_dir, proposals, header)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text(text)
        try:
            ids = sorted(r.run_id for r in sweep.expand(tmp, log=lambda _: None))
            if ids != sorted(p["run_id"] for p in proposals):  # the file must train exactly the runs scored
                raise RuntimeError(f"plan: {out} would expand to other runs than planned ({ids})")
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        result["out"] = str(out)
    result["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return result


def _explain(p: dict, target: str) -> str:
    return (f"d_model {p['d_model']} x {p['n_layers']} layers (N {p['N']:.3g}), {p['steps']} steps (D {p['D']:.3g},"
            f" {p['tokens_per_param']:.1f} tokens/param), {p['flops']:.3g} FLOPs: interval "
            f"{fmt_width(p['width_before'], target)} -> {fmt_width(p['width_after'], target)}, "
            f"{p['width_reduction'] / p['width_before']:.0%} narrower, "
            f"{_per_tflop(p):.3g} points per 1e12 FLOPs")


def _short(w: float, target: str) -> str:
    return f"{w:.2%}" if target == "loss" else f"x{np.exp(w):.2f}"


def _per_tflop(p: dict) -> float:
    """Percentage points of interval width removed per 1e12 FLOPs: the proposal's value for money."""
    return 100 * p["reduction_per_flop"] * 1e12


def format_text(r: dict) -> str:
    lo, hi = r["ci"] or (float("nan"), float("nan"))
    lines = [f"plan {r['sweep_dir']}: {r['runs']} runs ({r['flops_in_sweep']:.3g} FLOPs); {r['what']} at C = "
             f"{r['target_flops']:.3g}: {r['estimate']:.4g} [{lo:.4g}, {hi:.4g}], width "
             f"{fmt_width(r['width'], r['target'])} "
             f"(bootstrap; linearised {fmt_width(r['linear_width'], r['target'])}, residual sigma {r['sigma']:.2g})",
             f"budget {r['budget']:.3g} FLOPs, k = {r['k']}, {r['candidates']} candidates; proposed "
             f"{len(r['proposals'])} runs, {r['planned_flops']:.3g} FLOPs -> predicted width "
             f"{fmt_width(r['predicted_width'], r['target'])}",
             f"{'run_id':12s} {'d_model':>7s} {'layers':>6s} {'steps':>6s} {'N':>9s} {'D':>9s} {'D/N':>6s} "
             f"{'FLOPs':>9s} {'width after':>11s} {'cut':>5s} {'pts/1e12 FLOPs':>14s}"]
    for p in r["proposals"]:
        lines.append(f"{p['run_id']:12s} {p['d_model']:7d} {p['n_layers']:6d} {p['steps']:6d} {p['N']:9.3g} "
                     f"{p['D']:9.3g} {p['tokens_per_param']:6.1f} {p['flops']:9.3g} "
                     f"{_short(p['width_after'], r['target']):>11s} "
                     f"{p['width_reduction'] / p['width_before']:5.0%} {_per_tflop(p):14.3g}")
    if not r["proposals"]:
        lines.append("no candidate fits the budget (raise --budget, or pass --widths with smaller shapes)")
    if r.get("out"):
        lines.append(f"wrote {r['out']}: testbed sweep {r['out']} --out {r['sweep_dir']}")
    return "\n".join(lines)


def jsonable(r: dict) -> dict:
    """The plan as --json prints it: runstore.jsonable of it, each proposal without its Config object."""
    return runstore.jsonable({**r, "proposals": [{k: v for k, v in p.items() if k != "cfg"} for p in r["proposals"]]})


# --- progressive mode -----------------------------------------------------------------------------------------

def _history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progressive(sweep_dir: str | Path, *, target_flops: float, threshold: float, target: str = "loss",
                budget: float | None = None, k: int = 4, widths: list[int] | None = None, bootstrap: int = 200,
                seed: int = 0, max_rounds: int = 10, workers: int | None = None, log: Log = print) -> dict:
    """fit -> plan -> train rounds until the bootstrap width at the target is <= threshold or the budget is spent.
    Resumable: SWEEP_DIR/plan/history.jsonl holds every round; a round whose runs did not finish is trained again."""
    from testbed.launch import sweep

    from testbed.runstore import atomic_write_text

    sweep_dir = Path(sweep_dir)
    if not threshold > 0:
        raise ConfigError(f"--threshold: must be > 0 (a relative 95% interval width, e.g. 0.02), got {threshold}")
    if not sweep_dir.is_dir():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is not a directory; pass the directory `testbed sweep` wrote")
    pdir = sweep_dir / "plan"
    hpath = pdir / "history.jsonl"
    hist = _history(hpath)
    if hist and (hist[-1].get("target"), hist[-1].get("target_flops")) != (target, target_flops):
        raise ConfigError(f"{hpath}: an earlier plan targets {hist[-1].get('target')} at "
                          f"{hist[-1].get('target_flops'):.3g} FLOPs; pass the same --target/--target-flops, or "
                          "move the plan/ directory away to start another")

    def save() -> None:
        pdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(hpath, "".join(json.dumps(h) + "\n" for h in hist))

    if hist and hist[-1].get("sweep_file") and not hist[-1].get("stop"):
        log(f"plan: resuming round {hist[-1]['round']}: training {hist[-1]['sweep_file']}")
        _train(sweep, Path(hist[-1]["sweep_file"]), sweep_dir, workers, log)
    if budget is None:
        budget = hist[0]["budget"] if hist else None
    while True:
        fitted = _fit(sweep_dir, target, target_flops, bootstrap, seed)
        _, rows, st, ci = fitted
        spent_plan = float(sum(h.get("planned_flops", 0.0) for h in hist))
        in_dir = float(rows["C"].sum())
        if budget is None:
            budget = in_dir
        entry = {"round": len(hist), "time": time.time(), "target": target, "target_flops": target_flops,
                 "threshold": threshold, "budget": budget, "runs": len(rows), "flops_in_sweep": in_dir,
                 "plan_flops_spent": spent_plan, "estimate": float(np.exp(st.estimate)), "ci": ci,
                 "width": float(st.width())}
        if hist and "predicted_width" in hist[-1]:
            entry["predicted_by_last_round"] = hist[-1]["predicted_width"]
        log(f"plan round {entry['round']}: {len(rows)} runs, width {fmt_width(entry['width'], target)} (threshold "
            f"{fmt_width(threshold, target)}); plan spent {spent_plan:.3g} of {budget:.3g} FLOPs")
        if entry["width"] <= threshold or len(hist) >= max_rounds:
            entry["stop"] = "reached" if entry["width"] <= threshold else "max_rounds"
            hist.append(entry)
            save()
            break
        left = budget - spent_plan
        out = pdir / f"round-{entry['round']:02d}.yaml"
        r = None
        # this round may spend ROUND_GROWTH of the sweep's FLOPs; if no candidate is that cheap, whatever is left
        for round_budget in dict.fromkeys(b for b in (min(left, ROUND_GROWTH * in_dir), left) if b > 0):
            r = plan(sweep_dir, target_flops=target_flops, target=target, k=k, widths=widths, stop_width=threshold,
                     budget=round_budget, out=out, fitted=fitted)
            if r["proposals"]:
                break
        if r is None or not r["proposals"]:
            entry["stop"] = "budget"
            hist.append(entry)
            save()
            break
        entry.update(sweep_file=str(out), planned_flops=r["planned_flops"], predicted_width=r["predicted_width"],
                     proposals=[{k_: p[k_] for k_ in ("run_id", "d_model", "n_layers", "steps", "N", "D", "flops",
                                                      "width_after")} for p in r["proposals"]])
        hist.append(entry)
        save()
        log(format_text(r))
        _train(sweep, out, sweep_dir, workers, log)
    last = hist[-1]
    return {"sweep_dir": str(sweep_dir), "stop": last["stop"], "rounds": len(hist) - 1, "width": last["width"],
            "threshold": threshold, "estimate": last["estimate"], "ci": last["ci"],
            "plan_flops_spent": last["plan_flops_spent"], "budget": budget, "history": str(hpath)}


def _train(sweep, path: Path, sweep_dir: Path, workers: int | None, log: Log) -> None:
    res = sweep.run_sweep(path, sweep_dir, workers=workers, log=log)
    if not res["ok"]:
        raise ConfigError(f"plan: runs of {path} did not complete ({res['counts']}); see `testbed status "
                          f"{sweep_dir}`, then run the same `testbed plan --progressive` again to resume")
