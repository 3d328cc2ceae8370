"""How a sweep's runs go to a backend: units (one run, or a pack of same-shape runs), workers, environment.

Local backend, no `--workers`/`--pack`: the layout (trainer processes x runs per vmapped pack, XLA flags) is the
fastest measured for the sweep's most common run shape (launch/layout.py). Measuring costs minutes (228 s for
d_model 64 x 8 runs on the 2-core VM), so it happens when the runs of that shape would take at least MEASURE_MIN_S
one at a time (or with `--layout measure`);
a layout measured before for the shape and this machine is reused from the cache either way. Otherwise runs go
one at a time. SLURM and Ray: one unit per run, or `--pack K` runs per unit; their nodes are not this machine, so
nothing is measured here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from testbed.launch import layout

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


def plan(runs: list[tuple[str, config.Config, float]], backend: str = "local", workers: int | None = None,
         pack: int | None = None, mode: str = "auto", log: Callable[[str], None] = print) -> Plan:
    """runs: (run_id, config, estimated seconds one at a time) of the runs to train, in sweep order."""
    if mode not in LAYOUT_MODES:
        raise ConfigError(f"--layout: unknown '{mode}'; choose one of {', '.join(LAYOUT_MODES)}")
    for flag, value in (("--workers", workers), ("--pack", pack)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    if backend != "local" or workers is not None or pack is not None:
        lay, why = layout.Layout(workers or 1, pack or 1), "from --workers/--pack"
    else:
        lay, why = _auto(runs, mode, log)
    cfgs = [cfg for _, cfg, _ in runs]
    groups = sorted(group_by_pack(cfgs, lay.pack), key=min)  # sweep order: a unit goes where its first run was
    units = [[runs[i][0] for i in g] for g in groups]
    env = layout.layout_env(lay) if backend == "local" else None
    return Plan(units, lay.procs, env, lay, why)


def _auto(runs: list[tuple[str, config.Config, float]], mode: str, log) -> tuple[layout.Layout, str]:
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
    log(f"measuring layouts (processes x pack) for {n} runs of d_model {cfg.model.d_model}: a few minutes, once; "
        f"cached in {layout.CACHE}")
    best = layout.choose_layout(cfg, n, cache=layout.CACHE, refresh=mode == "measure")
    return best, f"measured for d_model {cfg.model.d_model} x {n} runs on this machine"
