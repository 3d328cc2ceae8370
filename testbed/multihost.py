"""Multi-host setup without jax: which GPUs a SLURM task owns, and waiting for the other processes with a deadline.

testbed/sharding.py's `initialize` calls these around jax.distributed.initialize: jax ends a process that waits
too long with an abort and a stack trace, so the deadline here comes first and says in one line what was awaited.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping

from testbed.config import ConfigError

TIMEOUT_ENV = "TESTBED_DISTRIBUTED_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300


def timeout_s(env: Mapping[str, str] = os.environ) -> int:
    """Seconds to wait for the coordinator and every process: TESTBED_DISTRIBUTED_TIMEOUT_S, default 300."""
    raw = env.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{TIMEOUT_ENV}: expected whole seconds >= 1, got {raw!r}")
    return int(raw)


def failure(timeout: int, kw: dict, env: Mapping[str, str]) -> str:
    """The one line said when the wait runs out: what was awaited, and what to check."""
    return (f"train.distributed: gave up after {timeout} s waiting for {waiting_for(kw, env)}; start every process "
            f"with the same command, check the address is reachable from this host, or raise {TIMEOUT_ENV}")


def slurm_local_devices(env: Mapping[str, str]) -> list[int] | None:
    """This task's share of its node's GPUs: all of them for one task per node (testbed launch), GPU SLURM_LOCALID
    for one task per GPU (the only one it sees under --gpus-per-task=1). None where the node's GPUs are unknown
    (jax's SLURM default, GPU SLURM_LOCALID, then applies)."""
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if len(visible) == 1:
        return [0]
    gpus = len(visible) or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    per_node = max(1, -(-tasks // max(1, nodes)))
    if not gpus or gpus % per_node:
        return None
    share, local = gpus // per_node, int(env.get("SLURM_LOCALID") or 0)
    return list(range(local * share, (local + 1) * share))


def waiting_for(kw: dict, env: Mapping[str, str]) -> str:
    """'the coordinator at HOST:PORT and 2 processes', from what was given or what SLURM/TPU set."""
    where = f"the coordinator at {kw['coordinator_address']}" if kw.get("coordinator_address") else (
        f"the coordinator on the first node of {env['SLURM_STEP_NODELIST']}" if env.get("SLURM_STEP_NODELIST")
        else f"the coordinator on {env['TPU_WORKER_HOSTNAMES'].split(',')[0]}" if env.get("TPU_WORKER_HOSTNAMES")
        else "the auto-detected coordinator")
    count = kw.get("num_processes") or env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or (
        len(env["TPU_WORKER_HOSTNAMES"].split(",")) if env.get("TPU_WORKER_HOSTNAMES") else "all")
    me = kw.get("process_id", env.get("SLURM_PROCID", env.get("TPU_WORKER_ID")))
    return f"{where} and {count} processes" + (f" (this is process {me})" if me is not None else "")


def reach(address: str, timeout: float, fail: str) -> None:
    """Retries a TCP connection to the coordinator until it answers; ConfigError `fail` past the timeout."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout)):
                return
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                raise ConfigError(fail) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def give_up(line: str) -> None:
    """The watchdog: jax is still waiting for the other processes; say what for and exit 2 (ConfigError's code)."""
    print(line, file=sys.stderr, flush=True)
    os._exit(2)
