"""How a sweep's runs go to a backend: units (one run, or a pack of same-shape runs), workers, environment.

Local backend, no `--workers`/`--pack`: the layout (trainer processes x runs per vmapped pack, XLA flags) is the
fastest measured for the sweep's most common run shape (launch/layout.py). Measuring costs minutes (228 s for
d_model 64 x 8 runs on the 2-core VM), so it happens when the runs of that shape would take at least MEASURE_MIN_S
one at a time (or with `--layout measure`);
a layout measured before for the shape and this machine is reused from the cache either way. Otherwise runs go
one at a time. With accelerators (found, or pretended with `--accelerators`), the placement is launch/placement.py's:
a worker per device, packs spread over them, nothing measured. SLURM and Ray: one unit per run, or `--pack K` runs
per unit; their nodes are not this machine, so nothing is measured here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from testbed.launch import layout, placement, runner
from testbed.launch.devices import Accelerators

from testbed import config
from testbed.config import ConfigError
from testbed.vmappable import group_by_pack, pack_key, solo_reason

# The measured layout saved 42% of a d_model-64 sweep's wall time (bench/sweep_layout.py), so ~4 min of measuring
# pays for itself from ~10 min of runs; 20 leaves a margin for shapes where the gain is smaller.
MEASURE_MIN_S = 1200.0
MEASURE_MAX_RUNS = 8  # layouts are measured for at most this many runs: more runs repeat the same layout
LAYOUT_MODES = ("auto", "measure")


@dataclass
class Plan:
    units: list[list[str]]  # run ids trained together: one run (testbed train) or a pack (testbed train-pack)
    workers: int
    env: dict | None  # trainer environment (local backend)
    layout: layout.Layout
    why: str  # where the layout came from, for the log
    slots: list[placement.Worker] | None = None  # local backend: each worker's devices, environment and units


def plan(runs: list[tuple[str, config.Config, float]], backend: str = "local", workers: int | None = None,
         pack: int | None = None, mode: str = "auto", log: Callable[[str], None] = print,
         accel: Accelerators | None = None, dry: bool = False) -> Plan:
    """runs: (run_id, config, estimated seconds one at a time) of the runs to train, in sweep order. accel: this
    machine's accelerators (launch/devices.py; None: CPU). dry: never measure (a dry run shows what it would use)."""
    if mode not in LAYOUT_MODES:
        raise ConfigError(f"--layout: unknown '{mode}'; choose one of {', '.join(LAYOUT_MODES)}")
    for flag, value in (("--workers", workers), ("--pack", pack)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    if backend == "local" and accel is not None and accel.kind != "cpu":
        return _on_accelerators(runs, accel, workers, pack, mode)
    if backend != "local" or workers is not None or pack is not None:
        lay, why = layout.Layout(workers or 1, pack or 1), "from --workers/--pack"
    else:
        lay, why = _auto(runs, mode, log, dry)
    cfgs = [cfg for _, cfg, _ in runs]
    groups = sorted(group_by_pack(cfgs, lay.pack), key=min)  # sweep order: a unit goes where its first run was
    units = [[runs[i][0] for i in g] for g in groups]
    if backend != "local":
        return Plan(units, lay.procs, None, lay, why)
    env = layout.layout_env(lay)
    if accel is not None and accel.pretend:  # --accelerators none: the trainers must not take an accelerator
        env["JAX_PLATFORMS"] = "cpu"
    pin = lay.procs > 1 and hasattr(os, "sched_setaffinity")
    cores = layout.core_sets(lay.procs, layout.cores_available()) if pin else [None] * lay.procs
    return Plan(units, lay.procs, env, lay, why, [placement.Worker(cores=c) for c in cores])


def _on_accelerators(runs: list[tuple[str, config.Config, float]], accel: Accelerators, workers: int | None,
                     pack: int | None, mode: str) -> Plan:
    """A worker per device (one for a TPU VM's chips), packs spread over them (launch/placement.py)."""
    if mode == "measure":
        raise ConfigError(f"--layout measure: layouts are measured for CPU cores; with {accel.describe()} the "
                          "sweep runs a worker per device; set --workers / --pack instead")
    cores = layout.cores_available() if hasattr(os, "sched_setaffinity") else None
    units, slots, k = placement.place(runs, accel, workers, pack, cores)
    per = "one worker owning every chip" if accel.kind == "tpu" else (
        f"{workers} worker(s) over the GPUs" if workers else "one worker per GPU")
    why = (f"{accel.describe()}{' (pretend)' if accel.pretend else ''}: {per}, packs of up to {k} "
           f"({'--pack' if pack else 'default'})")
    return Plan(units, len(slots), layout.worker_env(1), layout.Layout(len(slots), k), why, slots)


def placement_rows(p: Plan) -> list[dict]:
    """Per worker: the device ids it sees, the variables set for it, its pack size and the runs it trains."""
    rows = []
    for i, w in enumerate(p.slots or []):
        mine = [p.units[u] for u in w.units] if w.units is not None else None
        rows.append({"worker": i, "devices": list(w.devices), "env": dict(w.env),
                     "pack": max(map(len, mine), default=0) if mine is not None else p.layout.pack,
                     "runs": [rid for u in mine for rid in u] if mine is not None else None})
    return rows


def _auto(runs: list[tuple[str, config.Config, float]], mode: str, log, dry: bool = False
          ) -> tuple[layout.Layout, str]:
    """The measured (or cached) layout for the most common packable shape; one at a time if not worth it."""
    shapes: dict[str, list[int]] = {}
    for i, (_, cfg, _) in enumerate(runs):
        if solo_reason(cfg) is None:
            shapes.setdefault(pack_key(cfg), []).append(i)
    if not shapes or max(map(len, shapes.values())) < 2:
        return layout.SEQUENTIAL, "one at a time (no two runs share a shape)"
    group = max(shapes.values(), key=len)
    cfg, n = runs[group[0]][1], min(len(group), MEASURE_MAX_RUNS)
    cached = layout.cached_layout(cfg, n, cache=layout.CACHE)
    if cached is not None and mode != "measure":
        return cached, f"measured earlier for d_model {cfg.model.d_model} x {n} runs on this machine ({layout.CACHE})"
    est = sum(runs[i][2] for i in group)
    if mode != "measure" and est < MEASURE_MIN_S:
        return layout.SEQUENTIAL, (f"one at a time (the {len(group)} runs of the main shape take ~{est:.0f}s; layouts "
                                   f"are measured from {MEASURE_MIN_S:.0f}s; or pass --layout measure / --workers / "
                                   "--pack)")
    if dry:
        return layout.SEQUENTIAL, "one at a time for now (the sweep measures layouts first: a few minutes, once)"
    log(f"measuring layouts (processes x pack) for {n} runs of d_model {cfg.model.d_model}: a few minutes, once; "
        f"cached in {layout.CACHE}")
    best = layout.choose_layout(cfg, n, cache=layout.CACHE, refresh=mode == "measure")
    return best, f"measured for d_model {cfg.model.d_model} x {n} runs on this machine"


def dry_run(rows: list[dict], cfgs: dict[str, config.Config], workers: int | None, pack: int | None,
            accel: Accelerators | None) -> Plan:
    """The local plan of a dry run's not-yet-done rows (measures nothing); adds each row's `placement`: the worker,
    the device ids it sees, the variables set for it, and the runs in its unit (None for a done run)."""
    todo = [(r["run_id"], cfgs[r["run_id"]], r["est_s"]) for r in rows if r["status"] not in runner.DONE]
    p = plan(todo, "local", workers, pack, log=lambda _: None, accel=accel, dry=True)
    by_run = {}
    for i, w in enumerate(p.slots):
        for u in w.units if w.units is not None else range(len(p.units)):
            for rid in p.units[u]:
                by_run[rid] = {"worker": i if w.units is not None else None, "devices": list(w.devices),
                               "env": dict(w.env), "pack": len(p.units[u]), "unit": p.units[u]}
    for r in rows:
        r["placement"] = by_run.get(r["run_id"])
    return p


def format_placement(p: Plan) -> str:
    """A short table: per worker the devices it sees, its pack size and its runs (CPU: one line, any worker)."""
    head = f"placement: {p.why}"
    if not p.slots or p.slots[0].units is None:
        return f"{head}; {p.workers} worker(s) on the CPU cores, each taking the next unit"
    lines = [["worker", "devices", "env", "pack", "runs"]]
    for r in placement_rows(p):
        env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "-"
        runs = ", ".join(r["runs"][:3]) + (f", ... ({len(r['runs'])})" if len(r["runs"]) > 3 else "")
        lines.append([str(r["worker"]), ",".join(r["devices"]), env, str(r["pack"]), runs])
    widths = [max(len(row[c]) for row in lines) for c in range(4)]
    return "\n".join([head, *("  ".join([*(x.ljust(w) for x, w in zip(row, widths, strict=False)), row[4]])
                              for row in lines)])
