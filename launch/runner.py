"""The one idempotent entry point every backend calls: train a unit (one run, or a pack of same-shape runs).

A unit is a list of run directories under a sweep directory, each already holding its config.yaml. For each,
`train_unit` takes the claim (launch/claims.py), skips runs that are done or held by another live worker, and
trains the rest in ONE subprocess (`testbed train`, or `testbed train-pack` for several), which resumes from the
latest checkpoint. The subprocess inherits the claims' descriptors, so they stay locked until it exits even if
this worker dies. Local pool, SLURM (submitit) and Ray all call this function, so they share one behaviour,
including the persistent compilation cache: every trainer of a sweep reads and writes SWEEP_DIR/.jax_cache (unless
JAX_COMPILATION_CACHE_DIR is already set), so a shape compiled once is a disk read for every later run and worker.

Nothing here imports jax.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from testbed.launch import claims

from testbed.preempt import REQUEUE_EXIT
from testbed.runstore import RunDir

DONE = ("completed", "diverged")
CACHE_DIR = ".jax_cache"  # under the sweep directory
# cache every program, however small or fast to compile: a sweep compiles the same small shapes over and over
CACHE_THRESHOLDS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
BUSY = "busy"  # held by another live worker: try again later
# `testbed train` exits with REQUEUE_EXIT (75, EX_TEMPFAIL; defined in testbed/preempt.py) after a
# SIGTERM/SIGUSR1/SIGUSR2 made it checkpoint and stop: the run is incomplete and resumable, not failed.


def train_command(run_dirs: list[Path]) -> list[str]:
    """`testbed train` for one run, `testbed train-pack` (one vmapped program) for several."""
    if len(run_dirs) == 1:
        return [sys.executable, "-m", "testbed.launch.cli", "train", str(RunDir(run_dirs[0]).config_path),
                "--out", str(run_dirs[0]), "--no-progress"]
    return [sys.executable, "-m", "testbed.launch.cli", "train-pack", *map(str, run_dirs), "--no-progress"]


def trainer_env(sweep_dir: Path, env: dict | None = None) -> dict:
    """The trainer's environment (`env`, else ours) with the sweep's persistent compilation cache, unless one is set."""
    out = dict(os.environ if env is None else env)
    out.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(sweep_dir).resolve() / CACHE_DIR))
    for key, value in CACHE_THRESHOLDS.items():
        out.setdefault(key, value)
    return out


def run_status(run_dir: Path) -> str:
    """pending | running | incomplete | completed | diverged | failed, from the files and the claim."""
    rd = RunDir(run_dir)
    s = rd.read_summary()
    if s is not None and s.get("status") in DONE:
        return s["status"]
    if claims.holder(run_dir) is not None:
        return "running"
    if s is not None:
        return s.get("status", "failed")
    return "incomplete" if rd.metrics_path.exists() else "pending"


def _result(run_dir: Path, rc: int | None, wall_s: float, **extra) -> dict:
    s = RunDir(run_dir).read_summary() or {}
    status = s.get("status")
    if status is None:  # no summary: stopped (preempted, killed) before finishing; a re-run resumes it
        status = "incomplete" if rc in (REQUEUE_EXIT, None) or rc < 0 else "failed"
    return {"run_id": run_dir.name, "status": status, "returncode": rc,
            "final_eval_loss": s.get("final_eval_loss"), "wall_s": wall_s, **extra}


def train_unit(run_dirs: list[str | Path], *, env: dict | None = None, cores: set[int] | None = None,
               worker: str | None = None, on_start: Callable[[subprocess.Popen], None] | None = None,
               log_name: str = "train.log") -> list[dict]:
    """Trains the unclaimed, unfinished runs of a unit; returns one result per run (status BUSY when another
    worker holds it). Safe to call again at any time: done runs are skipped, interrupted ones resume."""
    t0 = time.perf_counter()
    dirs = [Path(d).resolve() for d in run_dirs]
    results: dict[Path, dict] = {}
    held: list[claims.Claim] = []
    try:
        for d in dirs:
            done = RunDir(d).read_summary()
            if done is not None and done.get("status") in DONE:
                results[d] = _result(d, 0, 0.0, skipped=True)
                continue
            c = claims.try_claim(d, worker)
            if c is None:
                results[d] = {"run_id": d.name, "status": BUSY, "wall_s": 0.0}
                continue
            done = RunDir(d).read_summary()  # re-read under the claim: it may have finished meanwhile
            if done is not None and done.get("status") in DONE:
                c.release()
                results[d] = _result(d, 0, 0.0, skipped=True)
                continue
            held.append(c)
        todo = [c.run_dir.resolve() for c in held]
        if todo:
            rc = _spawn(todo, env, cores, [c.fd for c in held], on_start, log_name)
            for d in todo:
                results[d] = _result(d, rc, time.perf_counter() - t0)
    finally:
        for c in held:
            c.release()
    return [results[d] for d in dirs]


def _spawn(dirs: list[Path], env: dict | None, cores: set[int] | None, fds: list[int],
           on_start: Callable | None, log_name: str) -> int:
    cmd = train_command(dirs)
    with open(dirs[0] / log_name, "a") as logf:
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=trainer_env(dirs[0].parent, env),
                                stdin=subprocess.DEVNULL, pass_fds=fds)
        if cores is not None:
            # Set from the parent right after spawn (preexec_fn is unsafe under threads): the child is still
            # starting Python, long before jax creates its thread pools, which inherit this mask.
            try:
                os.sched_setaffinity(proc.pid, cores)
            except OSError:
                pass
        if on_start is not None:
            on_start(proc)
        return proc.wait()


def stop(proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Asks a trainer to checkpoint and exit (SIGTERM) and waits for it; kills it only past the timeout.

    Safe inside a signal handler that interrupted `proc.wait()` (submitit's preemption handler does exactly
    that): Popen's own wait would deadlock on its non-reentrant lock, so this waits on a pidfd, which sees the
    exit without reaping it, and the interrupted wait still collects the exit code.
    """
    if proc.returncode is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        fd = os.pidfd_open(proc.pid)
    except (ProcessLookupError, OSError):
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        os.close(fd)
