"""Backends: hand units (one run, or a pack of runs) to an existing engine. No home-made scheduler.

- local: the plan's workers on this machine, each a trainer subprocess at a time, pinned to its cores and seeing
  only its accelerators (launch/placement.py).
- slurm: submitit job arrays, one unit per array task; preempted or timed-out tasks checkpoint and requeue.
- ray: one Ray task per unit on an existing cluster (`ray.init(address=...)`) or a local one.

Every backend calls launch/runner.py's `train_unit`, which claims runs, so any mix of backends and repeated
invocations on one sweep directory trains each run once. Runs branched from a parent (`Run.after`) are handed out
in waves: a unit starts only after its parents finished.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from testbed.launch import runner

from testbed.config import ConfigError

BACKENDS = ("local", "slurm", "ray")
Unit = list  # list of run ids trained together (one, or a pack)
Log = Callable[[str], None]


def parents_of(unit: Unit, after: dict[str, str | None]) -> set[str]:
    return {p for rid in unit if (p := after.get(rid)) and p not in unit}


def waves(units: list[Unit], after: dict[str, str | None]) -> list[list[Unit]]:
    """Units grouped so every unit's parents are in an earlier wave (parents outside the sweep count as ready)."""
    remaining, out = list(units), []
    while remaining:
        left = _ids(remaining)
        ready = [u for u in remaining if not parents_of(u, after) & left]
        if not ready:
            raise ConfigError("sweep: the runs' branch_from parents form a cycle; a branch must start from "
                              "an earlier run")
        out.append(ready)
        remaining = [u for u in remaining if u not in ready]
    return out


def _ids(units: list[Unit]) -> set[str]:
    return {rid for u in units for rid in u}


# --- local -----------------------------------------------------------------------------------------------

def run_local(units: list[Unit], out: Path, after: dict[str, str | None], slots: list, env: dict, log: Log,
              on_result: Callable[[dict], None], poll_s: float = 2.0) -> None:
    """Trains units on the plan's workers (`slots`: launch/placement.py Workers, each with its devices, extra
    environment, cores and, when placed, its own units). A worker trains one unit at a time; workers that share a
    device never run at once. A unit another worker holds is retried every poll_s until it is done (or its holder
    died, and then we resume it); a branched unit waits for its parents."""
    holds, where = _slot_map(units, slots)
    busy: set = set()
    procs: set = set()
    lock = threading.Lock()
    worker = f"local:{os.getpid()}"

    def job(unit: Unit, slot: int) -> list[dict]:
        def started(p):
            with lock:
                procs.add(p)
        try:
            return runner.train_unit([out / rid for rid in unit], env={**env, **slots[slot].env},
                                     cores=slots[slot].cores, worker=worker, on_start=started)
        finally:
            with lock:
                procs.difference_update({p for p in procs if p.poll() is not None})

    def free_slot(unit: Unit) -> int | None:
        return next((j for j in where[unit[0]] if not holds[j] & busy), None)

    final: dict[str, str] = {}
    pending: list[tuple[float, Unit]] = [(0.0, u) for u in units]
    ours = _ids(units)
    running: dict = {}
    pool = ThreadPoolExecutor(max_workers=max(1, len(slots)))

    def parent_state(p: str) -> str:
        if p in final:
            return "done" if final[p] in runner.DONE else "bad"
        if p in ours:
            return "wait"
        s = runner.run_status(out / p)
        return "done" if s in runner.DONE else ("wait" if s == "running" else "bad")

    try:
        while pending or running:
            now = time.monotonic()
            for item in list(pending):
                not_before, unit = item
                states = {p: parent_state(p) for p in parents_of(unit, after)}
                if not_before > now or "wait" in states.values():
                    continue
                bad = [p for p, s in states.items() if s == "bad"]
                if bad:  # a branch whose parent failed cannot start; say so and go on
                    pending.remove(item)
                    for rid in unit:
                        final[rid] = "failed"
                        on_result({"run_id": rid, "status": "failed", "wall_s": 0.0,
                                   "error": f"parent run {bad[0]} did not complete"})
                    continue
                slot = free_slot(unit)
                if slot is None:
                    continue
                pending.remove(item)
                busy.update(holds[slot])
                running[pool.submit(job, unit, slot)] = (unit, slot)
            if not running:
                time.sleep(poll_s)
                continue
            done, _ = wait(running, timeout=poll_s, return_when=FIRST_COMPLETED)
            for fut in done:
                unit, slot = running.pop(fut)
                busy.difference_update(holds[slot])
                retry = _collect(fut.result(), final, on_result)
                if retry:
                    pending.append((time.monotonic() + poll_s, retry))
    except BaseException:
        _stop(pool, procs, lock)
        raise
    pool.shutdown()


def _slot_map(units: list[Unit], slots: list) -> tuple[list[frozenset], dict[str, list[int]]]:
    """What each worker holds while it trains (its devices, else its own slot), and for each run the workers that
    may train it (its own, when placed; else any)."""
    holds = [frozenset(("device", d) for d in w.devices) or frozenset({("slot", i)}) for i, w in enumerate(slots)]
    where = {}
    for i, unit in enumerate(units):
        mine = [j for j, w in enumerate(slots) if w.units is None or i in w.units]
        for rid in unit:
            where[rid] = mine
    return holds, where


def _collect(results: list[dict], final: dict[str, str], on_result: Callable[[dict], None]) -> Unit:
    """Reports a unit's results; returns its runs another worker held (to try again later)."""
    busy = []
    for res in results:
        if res["status"] == runner.BUSY:
            busy.append(res["run_id"])
            continue
        final[res["run_id"]] = res["status"]
        on_result(res)
    return busy


def _stop(pool: ThreadPoolExecutor, procs: set, lock: threading.Lock) -> None:
    """Interrupted: cancel what has not started, SIGTERM the trainers (they checkpoint and exit; a re-run resumes)."""
    pool.shutdown(wait=False, cancel_futures=True)
    with lock:
        for p in procs:
            if p.poll() is None:
                p.terminate()


# --- SLURM via submitit ----------------------------------------------------------------------------------

try:
    import submitit as _submitit

    _Checkpointable = _submitit.helpers.Checkpointable
except ImportError:  # the slurm extra is optional
    _submitit = None
    _Checkpointable = object


class UnitTask(_Checkpointable):
    """A submitit array task: trains its unit; on preemption/timeout, stops the trainer and requeues itself."""

    def __init__(self):
        self._proc = None

    def __call__(self, run_dirs: list[str]) -> list[dict]:
        env = _submitit.JobEnvironment() if _submitit is not None else None
        who = f"slurm:{env.job_id}" if env is not None else "slurm"
        return runner.train_unit(run_dirs, worker=who, on_start=self._started)

    def _started(self, proc) -> None:
        self._proc = proc

    def checkpoint(self, run_dirs: list[str]):
        """Called by submitit's signal handler: the trainer saves a checkpoint (SIGTERM) before the requeue."""
        if self._proc is not None:
            runner.stop(self._proc)
        return _submitit.helpers.DelayedSubmission(UnitTask(), run_dirs)

    def __getstate__(self) -> dict:
        return {}  # the live Popen does not travel with the pickled task

    def __setstate__(self, state: dict) -> None:
        self._proc = None


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--backend {extra}: needs the '{module}' package; pip install 'scaling-testbed[{extra}]'") \
            from None


def slurm_executor(out: Path, resources: dict):
    """A submitit AutoExecutor from the sweep file's `resources.slurm` mapping (cluster: local runs it here)."""
    submitit = _require("submitit", "slurm")
    res = dict(resources)
    cluster = res.pop("cluster", None)
    res.setdefault("timeout_min", 60)
    res.setdefault("name", out.name)
    try:
        ex = submitit.AutoExecutor(folder=str(out / ".submitit" / "%j"), cluster=cluster)
        ex.update_parameters(**res)
    except (ValueError, NameError, RuntimeError) as e:
        raise ConfigError(f"resources.slurm: {e}; keys are submitit AutoExecutor parameters (timeout_min, "
                          "gpus_per_node, cpus_per_task, mem_gb, slurm_partition, slurm_array_parallelism, ...)") \
            from None
    return ex


def run_slurm(units: list[Unit], out: Path, after: dict[str, str | None], resources: dict, log: Log,
              on_result: Callable[[dict], None], wait_jobs: bool = True) -> list:
    """Submits one job array per wave. Waiting, waves run in turn; not waiting, later waves get
    `--dependency=afterany` on the previous array (SLURM only) and this returns the jobs."""
    ex = slurm_executor(out, resources)
    jobs_all = []
    prev_ids: list[str] = []
    for wave in waves(units, after):
        if prev_ids and not wait_jobs:
            ex.update_parameters(slurm_additional_parameters={"dependency": "afterany:" + ":".join(prev_ids)})
        jobs = ex.map_array(UnitTask(), [[str(out / rid) for rid in u] for u in wave])
        log(f"submitted {len(jobs)} task(s): job {jobs[0].job_id.split('_')[0] if jobs else '-'} "
            f"(logs in {out / '.submitit'})")
        jobs_all += jobs
        prev_ids = sorted({j.job_id.split("_")[0] for j in jobs})
        if wait_jobs:
            for unit, job in zip(wave, jobs, strict=True):
                try:
                    for res in job.result():
                        on_result(res)
                except Exception as e:  # the task died (node failure, out of requeues): the run is resumable
                    for rid in unit:
                        on_result({"run_id": rid, "status": runner.run_status(out / rid), "wall_s": 0.0,
                                   "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"})
    return jobs_all


# --- Ray -------------------------------------------------------------------------------------------------

def _ray_unit(run_dirs: list[str]) -> list[dict]:
    import ray

    return runner.train_unit(run_dirs, worker=f"ray:{ray.get_runtime_context().get_node_id()[:8]}")


RAY_KEYS = ("address", "init_num_cpus", "init_resources", "num_cpus", "num_gpus", "resources", "accelerator_type",
            "max_retries")


def ray_options(resources: dict) -> tuple[dict, dict]:
    """(ray.init keywords, each task's options) from resources.ray. Devices pass through to the tasks: num_gpus
    (Ray sets CUDA_VISIBLE_DEVICES for the task, and the trainer inherits it), `resources: {TPU: 4}` (Ray sets
    TPU_VISIBLE_CHIPS), accelerator_type (e.g. A100, TPU-V4). init_num_cpus / init_resources: only for a local
    cluster started here."""
    check("ray", resources)
    res = dict(resources)
    for key in ("resources", "init_resources"):
        value = res.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int | float) and v >= 0
                                                  for k, v in value.items()):
            raise ConfigError(f"resources.ray.{key}: expected a mapping of resource names to amounts, e.g. "
                              f"{{TPU: 4}}; got {value!r}")
    address = res.pop("address", None)
    local = address is None
    init = {"address": address, "num_cpus": res.pop("init_num_cpus", None) if local else None,
            "resources": res.pop("init_resources", None) if local else None}
    task = {"num_cpus": res.pop("num_cpus", 1), "num_gpus": res.pop("num_gpus", 0),
            "max_retries": res.pop("max_retries", 3)}
    for key in ("resources", "accelerator_type"):
        if res.get(key):
            task[key] = res[key]
    return init, task


def check(backend: str, resources: dict) -> None:
    """Fails on a missing optional package or a misspelt setting before anything is written."""
    if backend == "slurm":
        _require("submitit", "slurm")
    elif backend == "ray":
        _require("ray", "ray")
        unknown = [k for k in resources if k not in RAY_KEYS]
        if unknown:
            raise ConfigError(f"resources.ray: unknown key '{unknown[0]}'; use {', '.join(RAY_KEYS)}")


def run_ray(units: list[Unit], out: Path, after: dict[str, str | None], resources: dict, log: Log,
            on_result: Callable[[dict], None]) -> None:
    """One task per unit (num_cpus, num_gpus, resources per task from resources.ray: ray_options); Ray retries
    tasks lost with a node, and the claims plus checkpoints make a retry resume rather than restart."""
    ray = _require("ray", "ray")
    init, task_opts = ray_options(resources)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**init, include_dashboard=False, log_to_driver=False)
    task = ray.remote(**task_opts)(_ray_unit)
    try:
        for wave in waves(units, after):
            refs = {task.remote([str(out / rid) for rid in u]): u for u in wave}
            log(f"ray: {len(refs)} task(s) submitted")
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                unit = refs.pop(ready[0])
                try:
                    for r in ray.get(ready[0]):
                        on_result(r)
                except Exception as e:  # retries exhausted: leave the run resumable
                    for rid in unit:
                        on_result({"run_id": rid, "status": runner.run_status(out / rid), "wall_s": 0.0,
                                   "error": f"{type(e).__name__}: {str(e)[:200]}"})
    finally:
        if started_here:
            ray.shutdown()


def summarize(out: Path, run_ids: list[str]) -> dict[str, str]:
    return {rid: runner.run_status(out / rid) for rid in run_ids}

