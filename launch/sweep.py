"""Sweeps: expand a sweep file into runs with stable ids, and train them locally (optionally several at once).

A sweep file (YAML)::

    base: tiny.yaml              # a config file, relative to the sweep file's folder (or `config:` inline)
    set:                         # overrides applied to the base: dotted keys -> values
      train.steps: 300
    grid:                        # the product over every listed key
      param.name: [sp]
      optim.lr: {log2: [-12, -4, 1]}   # 2**x for x = start, start+step, ..., stop (inclusive)
      seed: [0, 1]
    zip:                         # lists of equal length varied together, crossed with the grid
      model.d_model: [32, 64]
      model.n_heads: [2, 4]
    design:                      # optional: isoflop | ladder | transfer | wsd_branch (launch/designs.py),
      type: isoflop              # its points crossed with the grid and zip
      budgets: [1.0e+11, 3.0e+11]
      widths: [32, 64, 128]

Each run is base + set + one grid point (+ one zip row) (+ one design point), resolved and validated by
testbed.config; its id is testbed.config.run_id (12 hex digits of the sha256 of the resolved config's identity
YAML), so identical configs are one run. A sweep directory holds `<run_id>/` run directories (the `testbed train`
layout, plus `train.log`), `sweep.yaml` (the latest sweep, resolved: base inlined, ranges expanded, so
`expand(SWEEP_DIR/sweep.yaml)` gives the same runs) and `manifest.json` (every run ever added to the directory,
with the keys and values that define it).

Nothing here imports jax: runs train in `python -m testbed.launch.cli train` subprocesses.
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from testbed.launch import designs, grammar

from testbed import config
from testbed.config import ConfigError, run_id
from testbed.runstore import RunDir
from testbed.sweepdir import SweepDir

SPEC_KEYS = ("base", "config", "set", "grid", "zip", "design", "name", "description", "resources")
DONE = ("completed", "diverged")


@dataclass(frozen=True)
class Run:
    run_id: str
    cfg: config.Config = field(repr=False, compare=False)
    varied: dict[str, Any] = field(compare=False)
    after: str | None = field(default=None, compare=False)  # parent run id (train.branch_from): train it first

    @property
    def name(self) -> str:
        """A readable label from the varied values, e.g. `name=sp,d_model=64,lr=0.000244,seed=0`."""
        return label(self.varied)


# --- the sweep file ---------------------------------------------------------------------------------------

def load_spec(path: str | Path) -> dict:
    """Reads and checks a sweep file; returns it resolved: `config` (the base mapping), `set`, `grid`, `zip`
    with every axis an explicit list. Raises ConfigError naming the problem and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {str(p)!r} does not exist: pass a YAML sweep file such as "
                          "configs/transfer_lr.yaml")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {str(p)!r} is not valid YAML: {e}") from None
    where = f"sweep {p}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping with base (or config), set, grid, zip")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key '{unknown[0]}'; sweep files take "
                          f"{', '.join(SPEC_KEYS)} (config keys go under set:, grid: or zip:)")
    if ("base" in spec) == ("config" in spec):
        raise ConfigError(f"{where}: give exactly one of 'base: CONFIG.yaml' (relative to the sweep file's "
                          "folder) or an inline 'config:' mapping")
    if "base" in spec:
        if not isinstance(spec["base"], str):
            raise ConfigError(f"{where}: base must be a config file path, got {spec['base']!r}")
        base_path = p.parent / spec["base"]
        if not base_path.is_file():
            raise ConfigError(f"{where}: base '{spec['base']}' not found (looked for {base_path}); base is "
                              "relative to the sweep file's folder")
        try:
            base = yaml.safe_load(base_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: base {base_path} is not valid YAML: {e}") from None
    else:
        base = spec["config"] or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: the base config must be a mapping of sections (model:, data:, ...)")

    sets = {k: grammar.number(v) for k, v in grammar.flatten(grammar.mapping(spec, "set", where)).items()}
    grid = {k: grammar.axis(f"{where}: grid", k, v) for k, v in grammar.mapping(spec, "grid", where).items()}
    zipped = {k: grammar.axis(f"{where}: zip", k, v) for k, v in grammar.mapping(spec, "zip", where).items()}
    grammar.check_zip(zipped, where)
    grammar.check_disjoint({"set": list(sets), "grid": list(grid), "zip": list(zipped)}, where)
    out = {"config": base, "set": sets, "grid": grid, "zip": zipped}
    if spec.get("design") is not None:
        out["design"] = designs.check(spec["design"], where)
    for k in ("name", "description"):
        if k in spec:
            out[k] = spec[k]
    out["resources"] = grammar.resources(spec, where)
    return out


# --- expansion ---------------------------------------------------------------------------------------------

def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def label(varied: dict) -> str:
    shorts = [k.rsplit(".", 1)[-1] for k in varied]
    return ",".join(f"{s if shorts.count(s) == 1 else k}={fmt(v)}" for s, (k, v) in zip(shorts, varied.items(),
                                                                                         strict=True))


def _config(spec: dict, overrides: dict) -> config.Config:
    """base + set + overrides (grid point, zip row, design point), validated."""
    raw = copy.deepcopy(spec["config"])
    for key, value in {**spec["set"], **overrides}.items():
        config.put(raw, key, copy.deepcopy(value))
    model = raw.get("model") or {}
    if "model.n_heads" in overrides and model.get("head_dim") is None:
        # A sweep that varies n_heads (zipped with d_model, or a transfer design) holds the head size: written out,
        # so that muP's companions do not read the head count as fixed (testbed.companions). The model is the same.
        d_model, heads = model.get("d_model", config.ModelConfig.d_model), model["n_heads"]
        if isinstance(d_model, int) and isinstance(heads, int) and heads > 0 and d_model % heads == 0:
            config.put(raw, "model.head_dim", d_model // heads)
    return config.from_dict(raw)


def _parent_id(cfg: config.Config) -> str | None:
    """Run.after: train.branch_from when it names a run of the same sweep directory (a bare run id)."""
    b = cfg.train.branch_from
    return b if b is not None and "/" not in b and b not in (".", "..") else None


def _design_points(spec: dict, varied: dict, where: str, log: Callable[[str], None]) -> list[designs.Point]:
    """The design's points for one grid point (no design: the grid point itself)."""
    if not spec.get("design"):
        return [designs.Point({}, {})]
    pts = designs.expand(spec["design"], lambda ov: _config(spec, {**varied, **ov}), where, log)
    fixed = {**{k: "set" for k in spec["set"]}, **{k: "grid" for k in spec["grid"]}, **{k: "zip" for k in spec["zip"]}}
    for pt in pts:
        for key in pt.overrides:
            if key in fixed:
                raise ConfigError(f"{where}: key '{key}' is set by the {spec['design']['type']} design and by "
                                  f"{fixed[key]}; remove it from {fixed[key]} (the design owns it)")
    return pts


def expand_spec(spec: dict, where: str = "sweep", log: Callable[[str], None] | None = None) -> list[Run]:
    """Every (grid point x zip row x design point) of a resolved spec as a validated Run; identical configs once."""
    if log is None:
        log = lambda s: print(s, file=sys.stderr, flush=True)
    grid, zipped = spec["grid"], spec["zip"]
    points = list(itertools.product(*grid.values()))
    rows = list(zip(*zipped.values(), strict=True)) if zipped else [()]
    runs: dict[str, Run] = {}
    for point in points:
        for row in rows:
            varied = {**dict(zip(grid, point, strict=True)), **dict(zip(zipped, row, strict=True))}
            ids: list[str] = []
            for pt in _design_points(spec, varied, where, log):
                shown = {**varied, **pt.varied}
                overrides = {**varied, **pt.overrides}
                if pt.parent is not None:
                    overrides["train.branch_from"] = ids[pt.parent]
                try:
                    cfg = _config(spec, overrides)
                except ConfigError as e:
                    at = f" (run {label(shown)})" if shown else ""
                    raise ConfigError(f"{where}{at}: {e}") from None
                rid = run_id(cfg)
                ids.append(rid)
                runs.setdefault(rid, Run(rid, cfg, shown, after=_parent_id(cfg)))
    return list(runs.values())


def expand(sweep_path: str | Path, log: Callable[[str], None] | None = None) -> list[Run]:
    """The runs of a sweep file, in grid order (zip rows, then design points innermost), duplicates removed."""
    return expand_spec(load_spec(sweep_path), where=f"sweep {sweep_path}", log=log)


# --- dry run -------------------------------------------------------------------------------------------------

# est. time = RUN_OVERHEAD_S + (training FLOPs + eval FLOPs) / flops_per_s. The default throughput is what small
# models reach on the project's 2-core CPU VM: MFU ~0.18 of a ~285 GFLOP/s measured f32 matmul peak
# (docs/performance.md, testbed/perf.py); pass `--flops-per-s` (a number, or `measure`: perf's matmul peak x
# ASSUMED_MFU) for another machine. The overhead is jax import + compile + first eval of one run process.
DEFAULT_FLOPS_PER_S = 5e10
ASSUMED_MFU = 0.18
RUN_OVERHEAD_S = 10.0


def measured_flops_per_s() -> float:
    """A quick throughput guess for this machine: the f32 matmul peak (testbed/perf.py) x ASSUMED_MFU."""
    from testbed import perf

    return perf.matmul_peak_flops(sizes=(1024,), reps=3) * ASSUMED_MFU


def parse_flops_per_s(text: str | None) -> float:
    """--flops-per-s: a positive number, 'measure', or None (DEFAULT_FLOPS_PER_S)."""
    if text is None:
        return DEFAULT_FLOPS_PER_S
    if text == "measure":
        return measured_flops_per_s()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"--flops-per-s: expected a positive number (e.g. 5e10) or 'measure', got {text!r}")
    return value


def _run_flops(cfg: config.Config) -> tuple[int, int]:
    """(FLOPs of the run's whole D, FLOPs it trains itself: a branch inherits its parent's steps up to s, plus
    eval forward passes)."""
    from testbed import shapes

    acc = shapes.count(cfg)
    total, start = cfg.total_steps, cfg.train.branch_step or 0
    at = {*range(cfg.train.eval_every, total + 1, cfg.train.eval_every), total, *cfg.train.checkpoint_steps}
    evals = len({e for e in at if e > start})
    eval_flops = evals * cfg.data.eval_sequences * cfg.data.seq_len * acc.forward_flops_per_token
    step_flops = cfg.tokens_per_step * acc.flops_per_token
    return total * step_flops, (total - start) * step_flops + eval_flops


def describe(runs: list[Run], out_dir: str | Path | None = None,
             flops_per_s: float = DEFAULT_FLOPS_PER_S) -> list[dict]:
    """One row per run: id, varied values, N (params_total), D (tokens), FLOPs, est. seconds, status in out_dir."""
    from testbed import shapes

    rows = []
    for r in runs:
        acc = shapes.count(r.cfg)
        tokens = r.cfg.total_steps * r.cfg.tokens_per_step
        flops, trained = _run_flops(r.cfg)
        rundir = Path(out_dir) / r.run_id if out_dir is not None else None
        rows.append({"run_id": r.run_id, "name": r.name, "varied": r.varied, "params_total": acc.params_total,
                     "tokens": tokens, "flops": flops, "flops_trained": trained,
                     "est_s": RUN_OVERHEAD_S + trained / flops_per_s, "after": r.after,
                     "status": RunDir(rundir).status() if rundir is not None and rundir.is_dir() else "pending",
                     "run_dir": str(rundir) if rundir is not None else None})
    return rows


def fmt_seconds(s: float) -> str:
    """12s, 3.4m, 1.2h, 2.0d."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.1f}{unit}"
    return f"{s:.0f}s"


def format_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r["varied"]))
    header = ["run_id", *keys, "N", "D", "FLOPs", "est_time", "status"]
    body = [[r["run_id"], *(fmt(r["varied"].get(k, "")) for k in keys), f"{r['params_total']:,}",
             f"{r['tokens']:,}", f"{r['flops']:.3g}", fmt_seconds(r["est_s"]), r["status"]] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *body])


def format_dry_run(rows: list[dict], flops_per_s: float) -> str:
    """The dry run's last line: runs, done, training FLOPs and the estimated time of what is left."""
    flops = sum(r["flops_trained"] for r in rows)
    est = fmt_seconds(sum(r["est_s"] for r in rows if r["status"] not in DONE))
    return (f"{len(rows)} runs, {sum(r['status'] in DONE for r in rows)} done, {flops:.3g} training FLOPs in all; "
            f"est. time {est} on one worker = {RUN_OVERHEAD_S:.0f}s per run + FLOPs / {flops_per_s:.3g} FLOP/s "
            "(--flops-per-s) (dry run: nothing written)")


# --- the sweep directory -----------------------------------------------------------------------------------

def write_sweep_files(spec: dict, runs: list[Run], out_dir: Path, source: str) -> None:
    """sweep.yaml (this sweep, resolved) and manifest.json (the union of every sweep's runs in out_dir)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = SweepDir(out_dir)
    sweep.write_spec(f"# resolved from {source}\n" + yaml.safe_dump(spec, sort_keys=False))
    sweep.add_to_manifest((r.run_id, {"name": r.name, "varied": r.varied}) for r in runs)


# --- running -------------------------------------------------------------------------------------------------

def run_sweep(sweep_path: str | Path, out_dir: str | Path, workers: int | None = None,
              log: Callable[[str], None] | None = None, backend: str = "local", wait: bool = True,
              pack: int | None = None, layout: str = "auto", accelerators: str | None = None) -> dict:
    """Trains every run of the sweep not already completed/diverged in out_dir, on the chosen backend.

    Every run directory gets its config.yaml first; then units go to the backend (launch/backends.py), which
    calls launch/runner.py's `train_unit`: claim, skip what is done, resume what is not. Safe to run again, and
    to run from several processes or nodes at once. accelerators: pretend devices ('gpu:8'; launch/devices.py),
    else the local ones are detected. Returns status counts over all runs, how many were trained
    and skipped, and wall time. A failed run does not stop the others.
    """
    from testbed.launch import backends, devices, plan

    if log is None:
        log = lambda s: print(s, file=sys.stderr, flush=True)
    for flag, value, ok in (("--workers", workers, None), ("--pack", pack, None), ("--layout", layout,
                            plan.LAYOUT_MODES), ("--backend", backend, backends.BACKENDS)):  # before any writing
        if ok is None and value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
        if ok is not None and value not in ok:
            raise ConfigError(f"{flag}: unknown '{value}'; choose one of {', '.join(ok)}")
    t0 = time.perf_counter()
    spec = load_spec(sweep_path)
    runs = expand_spec(spec, where=f"sweep {sweep_path}", log=log)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; pass a sweep directory")
    resources = spec.get("resources", {}).get(backend, {})
    backends.check(backend, resources)
    accel = devices.for_backend(backend, accelerators)
    for r in runs:  # a directory holding another config is an error before anything trains
        if RunDir(out / r.run_id).has_config:
            RunDir(out / r.run_id).check_or_write_config(r.cfg)
    write_sweep_files(spec, runs, out, str(sweep_path))

    final: dict[str, str] = {}
    todo = []
    for r in runs:
        s = RunDir(out / r.run_id).read_summary()
        if s is not None and s.get("status") in DONE:
            final[r.run_id] = s["status"]
        else:
            RunDir(out / r.run_id).check_or_write_config(r.cfg)
            todo.append(r)
    est = {row["run_id"]: row["est_s"] for row in describe(todo)}
    p = plan.plan([(r.run_id, r.cfg, est[r.run_id]) for r in todo], backend, workers, pack, layout, log, accel)
    packs = sum(len(u) > 1 for u in p.units)
    log(f"sweep {sweep_path}: {len(runs)} runs, {len(runs) - len(todo)} already done, training {len(todo)} "
        f"on {backend}" + (f" with {p.workers} worker(s)" if backend == "local" else "")
        + (f", {packs} pack(s) of up to {p.layout.pack}" if packs else "") + f" into {out}"
        + (f"; layout {p.layout.name}: {p.why}" if backend == "local" and todo else ""))

    k, names = 0, {r.run_id: r.name for r in runs}  # progress lines say what each run is, not only its hash

    def on_result(res: dict) -> None:
        nonlocal k
        k += 1
        final[res["run_id"]] = res["status"]
        loss, name = res.get("final_eval_loss"), names.get(res["run_id"]) or ""
        log(f"[{k}/{len(todo)}] {res['run_id']}{f' ({name})' if name else ''} {res['status']} "
            f"{'-' if loss is None else fmt(float(loss))} {res.get('wall_s', 0.0):.1f}s"
            + (f" (exit {res['returncode']}, see {out / res['run_id'] / 'train.log'})"
               if res.get("returncode") else "")
            + (f" ({res['error']})" if "error" in res else ""))

    after = {r.run_id: r.after for r in runs}
    if backend == "local":
        backends.run_local(p.units, out, after, p.slots, p.env, log, on_result)
    elif backend == "slurm":
        backends.run_slurm(p.units, out, after, resources, log, on_result, wait_jobs=wait)
    else:
        backends.run_ray(p.units, out, after, resources, log, on_result)
    if not wait:
        final.update(backends.summarize(out, [r.run_id for r in todo]))
    counts: dict[str, int] = {}
    for s in final.values():
        counts[s] = counts.get(s, 0) + 1
    return {"sweep_dir": str(out), "backend": backend, "runs": len(runs), "trained": len(todo),
            "skipped": len(runs) - len(todo), "counts": counts, "ok": all(s in DONE for s in final.values()),
            "wall_s": round(time.perf_counter() - t0, 3)}
