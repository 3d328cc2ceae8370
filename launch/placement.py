"""Which local worker trains which runs on which accelerator: every device busy, each worker seeing only its own.

GPUs: one worker process per GPU (CUDA_VISIBLE_DEVICES=<its id>, so JAX in it sees that one device), or `--workers
N` of them dealt round-robin over the GPUs (several on one GPU then share it, without preallocating its memory).
Same-shape runs are packed K per unit (testbed.vmappable): K = --pack, else enough to give every worker a unit,
at most ACCEL_PACK. A run with `train.mesh` gets a worker that sees as many GPUs as its mesh needs (-1: all of
them); it waits until those GPUs are free. TPU VM: one worker that owns every chip (only one process may open
them), training every unit in turn. Units are dealt longest first (by estimated time) to the least loaded worker
that fits, then each worker trains its own in sweep order, so `--dry-run` shows exactly what each will train.

Nothing here imports jax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from testbed.launch import layout
from testbed.launch.devices import Accelerators

from testbed import config
from testbed.config import ConfigError
from testbed.vmappable import group_by_pack, pack_key, solo_reason

# Small models leave an accelerator nearly idle (MFU ~1% at d_model 64 on an H100, docs/benchmarks.md), so packing
# is where throughput comes from; 8 keeps a pack's memory modest and an lr x seed block in one program.
ACCEL_PACK = 8


@dataclass
class Worker:
    devices: tuple[str, ...] = ()  # the accelerator ids it sees (() on a CPU-only machine)
    env: dict[str, str] = field(default_factory=dict)  # set for it on top of the sweep's trainer environment
    units: list[int] | None = None  # indices of the plan's units it trains, in order; None: any unit (CPU pool)
    cores: set[int] | None = None  # CPU cores it is pinned to


def mesh_devices(mesh: dict, n_devices: int, where: str = "train.mesh") -> int:
    """Devices a mesh uses when `n_devices` are there (-1 takes what the fixed axes leave); 1 without a mesh."""
    if not mesh:
        return 1
    fixed = math.prod(s for s in mesh.values() if s != -1)
    if fixed > n_devices or (-1 in mesh.values() and n_devices % fixed):
        raise ConfigError(f"{where}: {dict(mesh)} needs {fixed} devices (or a multiple, with -1) but this machine "
                          f"has {n_devices}; shrink the mesh or run it with testbed launch")
    return n_devices if -1 in mesh.values() else fixed


def pack_size(cfgs: list[config.Config], workers: int, pack: int | None) -> int:
    """--pack, else the biggest same-shape group spread over the workers, capped at ACCEL_PACK."""
    if pack is not None:
        return pack
    groups: dict[str, int] = {}
    for cfg in cfgs:
        if solo_reason(cfg) is None:
            groups[pack_key(cfg)] = groups.get(pack_key(cfg), 0) + 1
    biggest = max(groups.values(), default=1)
    return max(1, min(ACCEL_PACK, math.ceil(biggest / max(1, workers))))


def place(runs: list[tuple[str, config.Config, float]], accel: Accelerators, workers: int | None,
          pack: int | None, cores: list[int] | None) -> tuple[list[list[str]], list[Worker], int]:
    """(units of run ids, workers each with its devices, environment and units, pack size K)."""
    cfgs = [cfg for _, cfg, _ in runs]
    if accel.kind == "tpu":
        if workers not in (None, 1):
            raise ConfigError(f"--workers: a TPU VM's chips belong to one process; drop --workers (got {workers})")
        for rid, cfg, _ in runs:
            if mesh_devices(cfg.train.mesh, accel.count) not in (1, accel.count):
                raise ConfigError(f"train.mesh: run {rid}'s mesh {dict(cfg.train.mesh)} uses fewer than the "
                                  f"{accel.count} chips its TPU worker sees; set one axis to -1 to use them all")
    n_single = 1 if accel.kind == "tpu" else (workers or accel.count)
    k = pack_size(cfgs, n_single, pack)
    groups = sorted(group_by_pack(cfgs, k), key=min)
    units = [[runs[i][0] for i in g] for g in groups]
    if accel.kind == "tpu":
        return units, [Worker(accel.ids, {}, list(range(len(units))), set(cores) if cores else None)], k
    need = [mesh_devices(cfgs[g[0]].train.mesh, accel.count) for g in groups]
    pool = _gpu_workers(accel, n_single, sorted(set(need) - {1}), cores)
    load = [0.0] * len(pool)
    order = sorted(range(len(units)), key=lambda u: -sum(runs[i][2] for i in groups[u]))
    for u in order:  # longest first, to the least loaded worker with the right number of devices
        fits = [w for w in range(len(pool)) if len(pool[w].devices) == need[u]]
        w = min(fits, key=lambda w: (load[w], w))
        load[w] += sum(runs[i][2] for i in groups[u])
        pool[w].units.append(u)
    for w in pool:
        w.units.sort()
    return units, [w for w in pool if w.units], k


def _gpu_workers(accel: Accelerators, n_single: int, mesh_sizes: list[int], cores: list[int] | None
                 ) -> list[Worker]:
    """n_single one-GPU workers (round-robin over the GPUs), then for each mesh size m the GPUs in groups of m."""
    shared = n_single > accel.count
    extra = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if shared else {}
    share = layout.core_sets(n_single, cores) if cores and n_single > 1 else [None] * n_single
    out = []
    for i in range(n_single):
        dev = accel.ids[i % accel.count]
        out.append(Worker((dev,), {"CUDA_VISIBLE_DEVICES": dev, **extra}, [], share[i]))
    for m in mesh_sizes:
        for j in range(accel.count // m):
            devs = accel.ids[j * m:(j + 1) * m]
            mine = set().union(*(share[i] or set() for i in range(n_single) if out[i].devices[0] in devs)) or None
            out.append(Worker(devs, {"CUDA_VISIBLE_DEVICES": ",".join(devs)}, [], mine))
    return out

