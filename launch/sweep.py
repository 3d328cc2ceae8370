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

Each run is base + set + one grid point (+ one zip row), resolved and validated by testbed.config; its id is the
first 12 hex digits of the sha256 of the resolved config's YAML, so identical configs are one run. A sweep
directory holds `<run_id>/` run directories (the `testbed train` layout, plus `train.log`), `sweep.yaml` (the
latest sweep, resolved: base inlined, ranges expanded, so `expand(SWEEP_DIR/sweep.yaml)` gives the same runs)
and `manifest.json` (every run ever added to the directory, with the keys and values that define it).

Nothing here imports jax: runs train in `python -m testbed.cli train` subprocesses.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import config as C
from testbed.runstore import RunDir, atomic_write_text

SPEC_KEYS = ("base", "config", "set", "grid", "zip", "name", "description", "resources")
DONE = ("completed", "diverged")
# Appended to XLA_FLAGS when several runs share the machine. Accepted by the installed XLA (jax 0.10.2; an unknown
# --xla flag aborts the process at startup). It does not by itself shrink XLA:CPU's intra-op pool, which is sized
# from the process's CPU affinity mask: the affinity pinning in launch/runner.py is what splits the cores.
XLA_SHARED_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)


@dataclass(frozen=True)
class Run:
    run_id: str
    cfg: C.Config = field(repr=False, compare=False)
    varied: dict[str, Any] = field(compare=False)

    @property
    def name(self) -> str:
        """A readable label from the varied values, e.g. `name=sp,d_model=64,lr=0.000244,seed=0`."""
        return label(self.varied)


# --- the sweep file ---------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(v: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; take numeric-looking strings as numbers (as `--set` does)."""
    if isinstance(v, str) and _NUMBER.match(v.strip()) and not v.strip().lstrip("+-").isdigit():
        return float(v)
    if isinstance(v, list):
        return [_number(x) for x in v]
    if isinstance(v, dict):
        return {k: _number(x) for k, x in v.items()}
    return v


def _axis(where: str, key: str, value: Any) -> list:
    """An axis's values: a non-empty list, or {log2: [start, stop, step]} (stop inclusive, step default 1)."""
    if isinstance(value, dict):
        if set(value) != {"log2"}:
            raise C.ConfigError(f"{where}.{key}: a range is written {{log2: [start, stop, step]}}, got "
                                f"{value!r}; or give a list of values")
        r = value["log2"]
        if (not isinstance(r, list) or len(r) not in (2, 3)
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in r)):
            raise C.ConfigError(f"{where}.{key}: log2 takes [start, stop] or [start, stop, step] numbers, got {r!r}")
        start, stop, step = (*r, 1) if len(r) == 2 else r
        if step <= 0 or stop < start:
            raise C.ConfigError(f"{where}.{key}: log2 [{start}, {stop}, {step}] is empty; need step > 0 and "
                                "stop >= start")
        n = math.floor((stop - start) / step + 1e-9) + 1
        return [2.0 ** (start + i * step) for i in range(n)]
    if not isinstance(value, list):
        raise C.ConfigError(f"{where}.{key}: expected a list of values or {{log2: [start, stop, step]}}, "
                            f"got {value!r}")
    if not value:
        raise C.ConfigError(f"{where}.{key}: empty list; give at least one value (or remove the key)")
    return _number(value)


def _flatten(d: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}; dotted keys pass through."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _mapping(spec: dict, name: str, where: str) -> dict:
    v = spec.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise C.ConfigError(f"{where}: '{name}' must be a mapping of dotted config keys, got {v!r}")
    return v


def load_spec(path: str | Path) -> dict:
    """Reads and checks a sweep file; returns it resolved: `config` (the base mapping), `set`, `grid`, `zip`
    with every axis an explicit list. Raises ConfigError naming the problem and the fix."""
    p = Path(path)
    if not p.is_file():
        raise C.ConfigError(f"sweep file {str(p)!r} does not exist: pass a YAML sweep file such as "
                            "configs/transfer_lr.yaml")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise C.ConfigError(f"sweep file {str(p)!r} is not valid YAML: {e}") from None
    where = f"sweep {p}"
    if not isinstance(spec, dict):
        raise C.ConfigError(f"{where}: must be a mapping with base (or config), set, grid, zip")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise C.ConfigError(f"{where}: unknown top-level key '{unknown[0]}'; sweep files take "
                            f"{', '.join(SPEC_KEYS)} (config keys go under set:, grid: or zip:)")
    if ("base" in spec) == ("config" in spec):
        raise C.ConfigError(f"{where}: give exactly one of 'base: CONFIG.yaml' (relative to the sweep file's "
                            "folder) or an inline 'config:' mapping")
    if "base" in spec:
        if not isinstance(spec["base"], str):
            raise C.ConfigError(f"{where}: base must be a config file path, got {spec['base']!r}")
        base_path = p.parent / spec["base"]
        if not base_path.is_file():
            raise C.ConfigError(f"{where}: base '{spec['base']}' not found (looked for {base_path}); base is "
                                "relative to the sweep file's folder")
        try:
            base = yaml.safe_load(base_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise C.ConfigError(f"{where}: base {base_path} is not valid YAML: {e}") from None
    else:
        base = spec["config"] or {}
    if not isinstance(base, dict):
        raise C.ConfigError(f"{where}: the base config must be a mapping of sections (model:, data:, ...)")

    sets = {k: _number(v) for k, v in _flatten(_mapping(spec, "set", where)).items()}
    grid = {k: _axis(f"{where}: grid", k, v) for k, v in _mapping(spec, "grid", where).items()}
    zipped = {k: _axis(f"{where}: zip", k, v) for k, v in _mapping(spec, "zip", where).items()}
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise C.ConfigError(f"{where}: zip lists must have equal lengths ({detail}); zip varies its keys "
                            "together, row by row (use grid: for a product)")
    groups = {"set": list(sets), "grid": list(grid), "zip": list(zipped)}
    seen: dict[str, str] = {}
    for group, keys in groups.items():
        for key in keys:
            for other, og in seen.items():
                if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                    raise C.ConfigError(f"{where}: key '{key}' is in both {og} and {group}; a key may appear "
                                        "in only one of set, grid, zip")
            seen[key] = group
    out = {"config": base, "set": sets, "grid": grid, "zip": zipped}
    for k in ("name", "description"):
        if k in spec:
            out[k] = spec[k]
    out["resources"] = _resources(spec, where)
    return out


def _resources(spec: dict, where: str) -> dict:
    """`resources: {slurm: {...submitit parameters}, ray: {...}}`: per-backend settings, checked by name."""
    res = _mapping(spec, "resources", where)
    for k, v in res.items():
        if k not in ("local", "slurm", "ray") or not isinstance(v, dict):
            raise C.ConfigError(f"{where}: resources.{k}: expected resources.slurm or resources.ray mappings "
                                "(e.g. resources: {slurm: {timeout_min: 120, gpus_per_node: 1}})")
    return res


# --- expansion ---------------------------------------------------------------------------------------------

def _put(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise C.ConfigError(f"{key}: '{'.'.join(parts[:i + 1])}' is not a section")
    node[parts[-1]] = value


def run_id(cfg: C.Config) -> str:
    return hashlib.sha256(C.dump_yaml(cfg).encode()).hexdigest()[:12]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def label(varied: dict) -> str:
    shorts = [k.rsplit(".", 1)[-1] for k in varied]
    return ",".join(f"{s if shorts.count(s) == 1 else k}={fmt(v)}" for s, (k, v) in zip(shorts, varied.items(),
                                                                                         strict=True))


def expand_spec(spec: dict, where: str = "sweep") -> list[Run]:
    """Every (grid point x zip row) of a resolved spec as a validated Run; identical configs appear once."""
    grid, zipped = spec["grid"], spec["zip"]
    points = list(itertools.product(*grid.values()))
    rows = list(zip(*zipped.values(), strict=True)) if zipped else [()]
    runs: dict[str, Run] = {}
    for point in points:
        for row in rows:
            varied = {**dict(zip(grid, point, strict=True)), **dict(zip(zipped, row, strict=True))}
            raw = copy.deepcopy(spec["config"])
            try:
                for key, value in {**spec["set"], **varied}.items():
                    _put(raw, key, copy.deepcopy(value))
                cfg = C.from_dict(raw)
            except C.ConfigError as e:
                at = f" (run {label(varied)})" if varied else ""
                raise C.ConfigError(f"{where}{at}: {e}") from None
            rid = run_id(cfg)
            runs.setdefault(rid, Run(rid, cfg, varied))
    return list(runs.values())


def expand(sweep_path: str | Path) -> list[Run]:
    """The runs of a sweep file, in grid order (zip rows innermost), duplicates removed."""
    return expand_spec(load_spec(sweep_path), where=f"sweep {sweep_path}")


# --- dry run -------------------------------------------------------------------------------------------------

def describe(runs: list[Run], out_dir: str | Path | None = None) -> list[dict]:
    """One row per run: id, varied values, N (params_total), D (tokens), FLOPs, status in out_dir."""
    from testbed import shapes

    rows = []
    for r in runs:
        acc = shapes.count(r.cfg)
        tokens = r.cfg.total_steps * r.cfg.tokens_per_step
        rundir = Path(out_dir) / r.run_id if out_dir is not None else None
        rows.append({"run_id": r.run_id, "name": r.name, "varied": r.varied, "params_total": acc.params_total,
                     "tokens": tokens, "flops": tokens * acc.flops_per_token,
                     "status": RunDir(rundir).status() if rundir is not None and rundir.is_dir() else "pending",
                     "run_dir": str(rundir) if rundir is not None else None})
    return rows


def format_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r["varied"]))
    header = ["run_id", *keys, "N", "D", "FLOPs", "status"]
    body = [[r["run_id"], *(fmt(r["varied"].get(k, "")) for k in keys), f"{r['params_total']:,}",
             f"{r['tokens']:,}", f"{r['flops']:.3g}", r["status"]] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *body])


# --- the sweep directory -----------------------------------------------------------------------------------

def write_sweep_files(spec: dict, runs: list[Run], out_dir: Path, source: str) -> None:
    """sweep.yaml (this sweep, resolved) and manifest.json (the union of every sweep's runs in out_dir)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "sweep.yaml", f"# resolved from {source}\n" + yaml.safe_dump(spec, sort_keys=False))
    path = out_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    entries = manifest.get("runs", {})
    for r in runs:
        entries.setdefault(r.run_id, {"name": r.name, "varied": r.varied})
    manifest["runs"] = entries
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


# --- running -------------------------------------------------------------------------------------------------

def worker_env(workers: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    if workers > 1:
        flags = env.get("XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join([*flags, *(f for f in XLA_SHARED_FLAGS if f not in flags)])
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes on one accelerator
    return env


def run_sweep(sweep_path: str | Path, out_dir: str | Path, workers: int = 1,
              log: Callable[[str], None] | None = None, backend: str = "local", wait: bool = True) -> dict:
    """Trains every run of the sweep not already completed/diverged in out_dir, on the chosen backend.

    Every run directory gets its config.yaml first; then units go to the backend (launch/backends.py), which
    calls launch/runner.py's `train_unit`: claim, skip what is done, resume what is not. Safe to run again, and
    to run from several processes or nodes at once. Returns status counts over all runs, how many were trained
    and skipped, and wall time. A failed run does not stop the others.
    """
    from testbed.launch import backends

    if log is None:
        log = lambda s: print(s, file=sys.stderr, flush=True)
    if workers < 1:
        raise C.ConfigError(f"--workers: must be >= 1, got {workers}")
    if backend not in backends.BACKENDS:
        raise C.ConfigError(f"--backend: unknown '{backend}'; choose one of {', '.join(backends.BACKENDS)}")
    t0 = time.perf_counter()
    spec = load_spec(sweep_path)
    runs = expand_spec(spec, where=f"sweep {sweep_path}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise C.ConfigError(f"--out {out}: exists and is not a directory; pass a sweep directory")
    resources = spec.get("resources", {}).get(backend, {})
    backends.check(backend, resources)
    for r in runs:  # a directory holding another config is an error before anything trains
        if (out / r.run_id / "config.yaml").exists():
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
    log(f"sweep {sweep_path}: {len(runs)} runs, {len(runs) - len(todo)} already done, training {len(todo)} "
        f"on {backend}" + (f" with {workers} worker(s)" if backend == "local" else "") + f" into {out}")

    k = 0

    def on_result(res: dict) -> None:
        nonlocal k
        k += 1
        final[res["run_id"]] = res["status"]
        loss = res.get("final_eval_loss")
        log(f"[{k}/{len(todo)}] {res['run_id']} {res['status']} "
            f"{'-' if loss is None else fmt(float(loss))} {res.get('wall_s', 0.0):.1f}s"
            + (f" (exit {res['returncode']}, see {out / res['run_id'] / 'train.log'})"
               if res.get("returncode") else "")
            + (f" ({res['error']})" if "error" in res else ""))

    units = [[r.run_id] for r in todo]
    after = {r.run_id: getattr(r, "after", None) for r in runs}
    if backend == "local":
        backends.run_local(units, out, after, workers, worker_env(workers), log, on_result)
    elif backend == "slurm":
        backends.run_slurm(units, out, after, resources, log, on_result, wait_jobs=wait)
    else:
        backends.run_ray(units, out, after, resources, log, on_result)
    if not wait:
        final.update(backends.summarize(out, [r.run_id for r in todo]))
    counts: dict[str, int] = {}
    for s in final.values():
        counts[s] = counts.get(s, 0) + 1
    return {"sweep_dir": str(out), "backend": backend, "runs": len(runs), "trained": len(todo),
            "skipped": len(runs) - len(todo), "counts": counts, "ok": all(s in DONE for s in final.values()),
            "wall_s": round(time.perf_counter() - t0, 3)}
