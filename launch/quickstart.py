"""`testbed quickstart`: the main job end to end. Train an IsoFLOP sweep on the embedded synthetic data, fit the
Chinchilla law (bootstrap CIs) and the IsoFLOP law, predict a larger held-out run from the fit BEFORE training it,
train it, compare, and write the HTML report.

The learning rate is right at every size because the sweep uses muP with the LR tuned once at the base width
(docs/transfer.md: SP at one LR makes wide models worse and would corrupt the fitted law). Everything lands in OUT:
`sweep.yaml` + `sweep/` (the fitted runs), `holdout.yaml` + `holdout/` (the predicted run), `report/` and
`quickstart.json` (the summary, written last and atomically). Running it again trains nothing that is done and,
when the summary matches the runs on disk, prints it in seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from testbed import config
from testbed.config import ConfigError
from testbed.runstore import dumps
from testbed.sweepdir import SweepDir

# The base model and training recipe (muP, LR tuned at width 32 on this data: docs/transfer.md), shared by sizes.
RECIPE = {
    "param.name": "mup", "param.base_width": 32, "optim.lr": 2.0 ** -6, "optim.schedule": "wsd",
    "optim.cooldown_frac": 0.3, "optim.cooldown_shape": "linear", "optim.final_lr_frac": 0.0,
    "optim.grad_clip": None, "model.zero_init_readout": True, "train.eval_every": 10 ** 9,
    "train.checkpoint_every": 10 ** 9,
}
COOLDOWN = {k.removeprefix("optim."): RECIPE[k] for k in ("optim.cooldown_frac", "optim.cooldown_shape",
                                                           "optim.final_lr_frac")}
# size -> the sweep, the held-out run's budget (a multiple of the largest) and the bootstrap resamples. The sweep is
# an IsoFLOP grid (budgets in exact training FLOPs x ladder widths at fixed depth) trained as WSD branches: per width
# one constant-LR run, and per budget a cooldown branched from it (launch/designs.py wsd_branch), so a width's runs
# share their stable phase and 5 budgets over 16x cost about what 3 independent budgets did. "small" is the 2-core
# laptop default (~10 min); "tiny" is the CI check of the whole pipeline; "gpu" is a starting point for one
# accelerator (not timed here). Eval: a fixed stratified eval set (testbed/data/synthetic.py) large enough that the
# final eval loss's standard error is ~0.2% of the loss.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"budgets": [2.0e10, 4.0e10, 8.0e10], "widths": [16, 24, 32], "depth": 2, "head_dim": 8,
             "holdout_factor": 2.0, "bootstrap": 50, "min_steps": 20,
             "set": {"optim.warmup_steps": 10, "data.eval_sequences": 256}},
    "small": {"budgets": [5.0e10, 1.0e11, 2.0e11, 4.0e11, 8.0e11], "widths": [24, 32, 48, 64, 96], "depth": 2,
              "head_dim": 8, "holdout_factor": 3.0, "bootstrap": 200, "min_steps": 50,
              "set": {"optim.warmup_steps": 20, "data.eval_sequences": 1536}},
    "gpu": {"budgets": [1.0e15, 2.0e15, 4.0e15, 8.0e15, 1.6e16], "widths": [128, 192, 256, 384, 512], "depth": 4,
            "head_dim": 64, "holdout_factor": 3.0, "bootstrap": 500, "min_steps": 200,
            "set": {"optim.warmup_steps": 100, "data.eval_sequences": 4096, "data.seq_len": 256,
                    "train.batch_size": 64, "param.base_width": 128}},
}
# widths the held-out run may take (the fitted law picks the one with the lowest predicted loss at its budget)
HOLDOUT_WIDTHS = {"tiny": [16, 24, 32, 48, 64], "small": [24, 32, 48, 64, 96, 128, 192],
                  "gpu": [128, 192, 256, 384, 512, 768, 1024]}

# the report's figures for an IsoFLOP sweep (the other kinds need LR, batch or schedule sweeps)
REPORT_KINDS = ("curves", "compute", "isoflop", "envelope", "contour", "holdout")
Log = Callable[[str], None]


def _base_config() -> dict:
    """testbed.config's defaults at configs/tiny.yaml's context (64 tokens), inlined so the sweep file stands alone;
    the design sets the shape and steps."""
    return config.to_dict(config.from_dict({"data": {"seq_len": 64}, "train": {"steps": 300}}))


def sweep_spec(size: str, budgets: list[float] | None = None, widths: list[int] | None = None, seed: int = 0,
               branched: bool = True) -> dict:
    """The quickstart's sweep file: its IsoFLOP grid as WSD branches, or (branched=False: the held-out run) plain
    WSD runs with the same schedule (a branch's LR is exactly that of a WSD run of its length)."""
    s = SIZES[size]
    design = {"type": "isoflop", "budgets": budgets or s["budgets"], "widths": widths or s["widths"],
              "depth": s["depth"], "head_dim": s["head_dim"], "min_steps": s["min_steps"]}
    recipe = dict(RECIPE)
    if branched:  # the design owns the schedule: constant for the per-width runs, the recipe's cooldown for branches
        design = {**design, "type": "wsd_branch", **COOLDOWN}
        recipe = {k: v for k, v in recipe.items() if k != "optim.schedule" and k.removeprefix("optim.") not in COOLDOWN}
    return {
        "name": f"quickstart-{size}" + (f"-seed{seed}" if seed else ""),
        "description": "testbed quickstart: IsoFLOP grid trained as WSD branches, muP with the LR tuned at the base "
                       "width",
        "config": _base_config(),
        "set": {**recipe, **s["set"], **({"seed": seed} if seed else {})},
        "design": design,
    }


def _write_spec(path: Path, spec: dict) -> None:
    """Writes the sweep file; one already there must describe the same sweep (else: a different quickstart)."""
    text = yaml.safe_dump(spec, sort_keys=False)
    if path.exists():
        if yaml.safe_load(path.read_text()) != yaml.safe_load(text):
            raise ConfigError(f"--out: {path.parent} holds a different quickstart ({path.name} differs: another "
                              "--size or version); pass another --out, or delete that directory")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(obj, indent=1))
    os.replace(tmp, path)


def _run_ids(spec_path: Path) -> list[str]:
    from testbed.launch import sweep

    return sorted(r.run_id for r in sweep.expand(spec_path, log=lambda _: None))


def _all_done(sweep_dir: Path, ids: list[str]) -> bool:
    sweep = SweepDir(sweep_dir)
    return all((sweep.run(rid).read_summary() or {}).get("status") == "completed" for rid in ids)


def _train(spec_path: Path, sweep_dir: Path, workers: int | None, log: Log) -> dict:
    from testbed.launch import sweep

    t0 = time.perf_counter()
    out = sweep.run_sweep(spec_path, sweep_dir, workers=workers,
                          log=lambda m: log(f"[{time.perf_counter() - t0:6.1f}s] {m}"))
    if not out["ok"]:
        raise ConfigError(f"quickstart: runs did not complete ({out['counts']}); see the train.log files under "
                          f"{sweep_dir} (testbed status {sweep_dir}); run quickstart again to resume")
    return out


def _default_workers(size: str) -> int:
    """Two training processes on a CPU with 2+ cores: quickstart runs are short, so compiles and process starts are
    a large share and overlap (15 runs of the small size: 286 s with 2 vs 328 s with 1 on the 2-core VM); one on an
    accelerator."""
    return 1 if size == "gpu" else min(2, os.cpu_count() or 1)


def _pick_holdout(size: str, out: Path, res, budget: float, bt: dict | None, seed: int) -> tuple[int, dict]:
    """The ladder width with the lowest predicted loss at `budget` under the fitted law, with that prediction,
    its bootstrap CI and its 90% prediction interval (the law's backtest errors on the sweep, `bt`): the prediction
    is made before the run is trained."""
    import numpy as np
    from testbed.analysis import fit
    from testbed.launch import sweep

    from testbed import shapes

    spec = sweep_spec(size, budgets=[budget], widths=HOLDOUT_WIDTHS[size], seed=seed, branched=False)
    probe = out / ".holdout-candidates.yaml"
    probe.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        runs = sweep.expand(probe, log=lambda _: None)
    finally:
        probe.unlink()
    rows = []
    for r in runs:
        acc = shapes.count(r.cfg)
        tokens = r.cfg.train.steps * r.cfg.tokens_per_step
        rows.append((r.cfg.model.d_model, float(acc.params_total), float(tokens)))
    X = np.array([[n, d] for _, n, d in rows])
    pred = res.predict(X)
    i = int(np.argmin(pred))
    width, n, d = rows[i]
    p = {"width": width, "N": n, "D": d, "C": budget, "predicted_loss": float(pred[i]),
         "candidates": [{"width": w, "N": nn, "D": dd, "predicted_loss": float(q)}
                        for (w, nn, dd), q in zip(rows, pred, strict=True)]}
    if res.boot_raw is not None:
        boot = fit.predict_many(res.law, res.boot_raw, X[i:i + 1])[:, 0]
        p["predicted_ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    if bt and "chinchilla" in bt["laws"]:
        from testbed.analysis import intervals

        factor = budget / bt["C_max"]
        pi = intervals.interval(bt["laws"]["chinchilla"]["points"], p["predicted_loss"], factor, p.get("predicted_ci"))
        p.update(predicted_pi=pi["pi"], pi_level=pi["pi_level"], extrapolation_factor=factor,
                 pi_method=intervals.PI_METHOD, backtest_cuts=len(bt["cuts"]))
    return width, p


def _intervals(pred: dict) -> str:
    """ CI [lo, hi] 90% PI [lo, hi], for what the prediction has."""
    return "".join(f" {name} [{pred[key][0]:.4f}, {pred[key][1]:.4f}]" for name, key in
                   (("CI", "predicted_ci"), (f"{pred.get('pi_level', 0):.0%} PI", "predicted_pi")) if key in pred)


def _backtest(sweep_dir: Path, boot: int, log: Log) -> dict | None:
    """Chinchilla's rolling-origin backtest on the sweep (the errors that size the held-out run's interval); None
    when the sweep has too few budgets to cut."""
    from testbed.analysis import backtest, load

    rows = load.usable(load.load(sweep_dir))[0]
    try:
        bt = backtest.backtest(rows, ("chinchilla",), bootstrap=boot, progress=log)
    except ConfigError as e:
        log(f"no prediction interval: {e}")
        return None
    return {**bt, "C_max": float(rows["C"].max())}


def _finished(out: Path, ids: list[str], summary_path: Path) -> dict | None:
    """The summary of an earlier quickstart whose runs are all on disk and done (resumed: True), else None."""
    if not summary_path.is_file():
        return None
    done = json.loads(summary_path.read_text())
    hold_ids = done.get("holdout", {}).get("run_ids", [])
    if (done.get("run_ids") == ids and _all_done(out / "sweep", ids) and hold_ids
            and _all_done(out / "holdout", hold_ids)):
        done["resumed"] = True
        return done
    return None


def quickstart(out: str | Path = "runs/quickstart", size: str = "small", workers: int | None = None,
               log: Log = print, seed: int = 0) -> dict:
    """Train, fit, predict, verify, report; returns the summary (also OUT/quickstart.json)."""
    if size not in SIZES:
        raise ConfigError(f"--size: unknown '{size}'; choose one of {', '.join(SIZES)}")
    out = Path(out)
    t_start = time.perf_counter()
    spec_path, holdout_path = out / "sweep.yaml", out / "holdout.yaml"
    _write_spec(spec_path, sweep_spec(size, seed=seed))
    ids = _run_ids(spec_path)
    summary_path = out / "quickstart.json"
    done = _finished(out, ids, summary_path)
    if done is not None:
        log(f"quickstart: {out} is complete; the summary below is from {summary_path} (delete it to refit)")
        return done
    phases: dict[str, float] = {}

    t0 = time.perf_counter()
    log(f"quickstart ({size}, seed {seed}): {len(ids)} runs, budgets {SIZES[size]['budgets']} FLOPs x widths "
        f"{SIZES[size]['widths']} as WSD branches (one constant-LR run per width, a cooldown per budget), muP at lr "
        f"2^-6 tuned at width {RECIPE['param.base_width']}; into {out}")
    workers = workers or _default_workers(size)
    trained = _train(spec_path, out / "sweep", workers, log)
    phases["train_s"] = time.perf_counter() - t0

    from testbed.analysis import load, plotkinds

    t0 = time.perf_counter()
    boot = SIZES[size]["bootstrap"]
    log(f"fit: Chinchilla (Huber, {boot} bootstrap refits) and IsoFLOP parabolas on {out / 'sweep'}")
    fits = plotkinds.Fits(out / "sweep", bootstrap=boot)  # memoized: the report's figures reuse these fits
    chin, objs = fits.run("chinchilla")
    iso, _ = fits.run("isoflop")
    res = objs["result"]
    phases["fit_s"] = time.perf_counter() - t0

    bt = _backtest(out / "sweep", boot, log)
    phases["fit_s"] = time.perf_counter() - t0
    budget = SIZES[size]["budgets"][-1] * SIZES[size]["holdout_factor"]
    width, pred = _pick_holdout(size, out, res, budget, bt, seed)
    log(f"held-out run: C = {budget:.3g} FLOPs, width {width} (lowest predicted loss); predicted loss "
        f"{pred['predicted_loss']:.4f}{_intervals(pred)} before training it")
    _write_spec(holdout_path, sweep_spec(size, budgets=[budget], widths=[width], seed=seed, branched=False))
    t0 = time.perf_counter()
    _train(holdout_path, out / "holdout", 1, log)  # one run: one process with every core
    phases["holdout_train_s"] = time.perf_counter() - t0
    hold_ids = _run_ids(holdout_path)
    held = load.load(out / "holdout")
    observed = float(held["loss"].iloc[0])
    pred.update(observed_loss=observed, rel_error=pred["predicted_loss"] / observed - 1, run_ids=hold_ids,
                N_observed=float(held["N"].iloc[0]), D_observed=float(held["D"].iloc[0]))
    pred["inside_ci"] = bool("predicted_ci" in pred and pred["predicted_ci"][0] <= observed <= pred["predicted_ci"][1])
    pred["inside_pi"] = bool("predicted_pi" in pred and pred["predicted_pi"][0] <= observed <= pred["predicted_pi"][1])

    t0 = time.perf_counter()
    from testbed.analysis import html

    summary = {"size": size, "seed": seed, "out": str(out), "run_ids": ids, "runs": len(ids),
               "budgets": SIZES[size]["budgets"], "widths": SIZES[size]["widths"], "design": "wsd_branch",
               **_findings(size, load.load(out / "sweep"), chin, iso, res, budget),
               "holdout": pred, "trained": trained["trained"]}
    pre = format_summary(summary)
    html.build(out / "sweep", out / "report", bootstrap=boot, progress=lambda m: log(m), preface=pre, fits=fits,
               kinds=REPORT_KINDS)
    phases["report_s"] = time.perf_counter() - t0
    phases["total_s"] = time.perf_counter() - t_start
    summary["phases"] = {k: round(v, 1) for k, v in phases.items()}
    summary["report"] = str(out / "report" / "index.html")
    _write_json(summary_path, summary)
    return summary


def _findings(size: str, rows, chin: dict, iso: dict, res, budget: float) -> dict:
    """The summary's fitted quantities: eval-loss precision, the two laws, N_opt at the held-out budget, floors."""
    import numpy as np
    from testbed.analysis import load

    fitted = load.usable(rows)[0]
    se_rel = (fitted["loss_se"] / fitted["loss"]).to_numpy(float)
    return {
        "eval_loss_se_rel": {"median": float(np.nanmedian(se_rel)), "max": float(np.nanmax(se_rel)),
                             "eval_sequences": SIZES[size]["set"]["data.eval_sequences"]},
        "chinchilla": {k: chin[k] for k in ("params", "ci", "diagnostics", "n_points", "excluded")},
        "chinchilla_a": {"value": chin["derived"]["a"], "ci": (chin.get("ci") or {}).get("a")},
        "isoflop": {"params": iso["params"], "ci": iso.get("ci"), "budgets_used": sum(
            1 for b in iso["derived"]["budgets"] if b.get("used"))},
        "N_opt_at_holdout": _n_opt(chin, res, budget),
        "data_entropy": float(np.nanmean(rows["data_entropy"])) if "data_entropy" in rows.columns else None,
        "best_loss": float(fitted["loss"].min()),
    }


def format_text(out: dict) -> str:
    """`testbed quickstart` as text: the summary, then where the report is (and, when run now, the phase times)."""
    ph = out.get("phases", {})
    return format_summary(out) + "\n" + f"Report: {out['report']}" + (
        f"  ({ph['total_s'] / 60:.1f} min: train {ph['train_s']:.0f}s, fit {ph['fit_s']:.0f}s, held-out run "
        f"{ph['holdout_train_s']:.0f}s, report {ph['report_s']:.0f}s)" if not out.get("resumed") else "")


def _n_opt(chin: dict, res, budget: float) -> dict:
    """The fitted law's compute-optimal N, D at the held-out budget (C = 6ND), with bootstrap CIs."""
    import numpy as np
    from testbed.analysis import laws

    point = {k: float(v) for k, v in laws.chinchilla_optimum(res.params, budget).items()}
    if res.boot:
        b = laws.chinchilla_optimum({k: res.boot[k] for k in res.params}, budget)
        point["ci"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in b.items()}
    return point


def _ci(ci: list | None) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""


def format_summary(s: dict) -> str:
    """What the quickstart found, in a few lines a researcher reads first."""
    p, ci = s["chinchilla"]["params"], s["chinchilla"]["ci"] or {}
    h, n = s["holdout"], s["N_opt_at_holdout"]
    iso = s["isoflop"]
    lines = [
        f"Fitted on {s['chinchilla']['n_points']} runs ({len(s['budgets'])} budgets x {len(s['widths'])} widths, "
        "WSD cooldowns branched from one run per width; 95% bootstrap CIs):",
        f"  L(N, D) = E + A/N^alpha + B/D^beta: alpha = {p['alpha']:.3f}{_ci(ci.get('alpha'))}, "
        f"beta = {p['beta']:.3f}{_ci(ci.get('beta'))}",
        f"  E = {p['E']:.3f}{_ci(ci.get('E'))} nats/token vs the data's known entropy floor "
        + (f"{s['data_entropy']:.3f}" if s["data_entropy"] is not None else "(unknown)")
        + (f" (best run {s['best_loss']:.3f})" if s.get("best_loss") else "")
        + ": E is where this range's law levels off, an extrapolation",
        f"  N_opt ~ C^a: a = {s['chinchilla_a']['value']:.3f}{_ci(s['chinchilla_a']['ci'])} (parametric fit), "
        f"{iso['params']['a']:.3f}{_ci((iso.get('ci') or {}).get('a'))} (IsoFLOP parabolas, "
        f"{iso['budgets_used']} budgets)",
        f"  at C = {h['C']:.3g} FLOPs: N_opt = {n['N_opt']:,.0f}{_ci((n.get('ci') or {}).get('N_opt'))}, "
        f"D_opt = {n['D_opt']:,.0f} tokens ({n['tokens_per_param']:.1f} tokens/param)",
        f"Held-out run (trained after the fit): width {h['width']}, N = {h['N']:,.0f}, D = {h['D']:,.0f}, "
        f"C = {h['C']:.3g}",
        f"  predicted {h['predicted_loss']:.4f}{_ci(h.get('predicted_ci'))} (CI: parameter noise)"
        + (f", {h['pi_level']:.0%} prediction interval{_ci(h['predicted_pi'])} (with the law's backtest errors)"
           if "predicted_pi" in h else ""),
        f"  observed {h['observed_loss']:.4f}: error {h['rel_error']:+.2%}"
        + (" (inside the CI)" if h.get("inside_ci") else " (outside the CI)")
        + ((" and inside the PI" if h.get("inside_pi") else " and outside the PI") if "predicted_pi" in h else ""),
    ]
    se = s.get("eval_loss_se_rel")
    if se:
        lines.insert(1, f"  losses: final eval loss on a fixed stratified set of {se['eval_sequences']} sequences, "
                        f"standard error {se['median']:.2%} of the loss (median; max {se['max']:.2%})")
    warn = (s["chinchilla"]["diagnostics"] or {}).get("warning")
    if warn:
        lines.append(f"  WARNING {warn}")
    return "\n".join(lines)
