"""Multi-host runs use every device and never hang: the SLURM script's processes and what each task sees, an
salloc shell training locally, a coordinator nobody answers ending in one line, the TPU VM script."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest
from testbed.launch.cli import build_parser, main

from testbed import config, multihost, sharding

from .conftest import ROOT
from .test_sweep import TINY

TINY_CFG = str(ROOT / "configs" / "tiny.yaml")
FAST = [f"{k}={v}" for k, v in TINY.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)$", script, re.M))


def task_env(node: int, local: int, nodes: int, per_node: int, gpus: int) -> dict[str, str]:
    """What SLURM sets for one task of an `srun` step of the script's job (--gpus-per-node: every task of a node
    sees the node's GPUs)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(node * per_node + local),
            "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node), "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_STEP_NUM_TASKS": str(nodes * per_node), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NODELIST": f"gpu[01-{nodes:02d}]", "SLURM_GPUS_ON_NODE": str(gpus),
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))}


def test_slurm_two_nodes_of_eight_gpus_are_two_processes_with_eight_each(capsys):
    assert main(["launch", TINY_CFG, "--print", "--target", "slurm", "--nodes", "2", "--gpus-per-node", "8"]) == 0
    script = capsys.readouterr().out
    opts = sbatch_options(script)
    nodes, per_node, gpus = int(opts["nodes"]), int(opts["ntasks-per-node"]), int(opts["gpus-per-node"])
    assert (nodes, per_node, gpus) == (2, 1, 8) and "gpus-per-task" not in opts
    (srun,) = [x for x in script.splitlines() if x.startswith("srun ")]
    args = build_parser().parse_args(shlex.split(srun)[4:])
    cfg = config.load(args.config, args.overrides)
    assert cfg.train.distributed is True and cfg.train.mesh == {"data": -1}
    seen = []
    for node in range(nodes):
        for local in range(per_node):
            env = task_env(node, local, nodes, per_node, gpus)
            assert sharding.wants_distributed(None, env)
            seen.append((env["SLURM_PROCID"], tuple(multihost.slurm_local_devices(env))))
    assert seen == [("0", tuple(range(8))), ("1", tuple(range(8)))]  # 2 processes x 8 GPUs = 16 devices


def test_local_devices_for_other_task_layouts():
    per_gpu = [multihost.slurm_local_devices(task_env(1, i, 2, 8, 8)) for i in range(8)]
    assert per_gpu == [[i] for i in range(8)]  # one task per GPU: GPU SLURM_LOCALID
    one = {**task_env(0, 3, 2, 8, 8), "CUDA_VISIBLE_DEVICES": "3"}  # --gpus-per-task=1: it sees only its own
    assert multihost.slurm_local_devices(one) == [0]
    assert multihost.slurm_local_devices(task_env(0, 1, 1, 2, 8)) == [4, 5, 6, 7]  # 2 tasks share 8 GPUs
    cpu_only = {k: v for k, v in task_env(0, 0, 2, 1, 0).items() if k != "CUDA_VISIBLE_DEVICES"}
    assert multihost.slurm_local_devices(cpu_only) is None  # jax's default


def test_distributed_needs_a_real_job_step():
    salloc = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    assert not sharding.wants_distributed(None, salloc)  # an salloc shell: no step, trains alone
    assert sharding.wants_distributed(None, {**salloc, "SLURM_STEP_ID": "0", "SLURM_PROCID": "3",
                                             "SLURM_STEP_NUM_TASKS": "16"})
    assert not sharding.wants_distributed(None, {**salloc, "SLURM_STEP_ID": "0", "SLURM_PROCID": "0",
                                                 "SLURM_STEP_NUM_TASKS": "1"})  # srun -n 1 inside it


def test_an_salloc_shell_trains_locally(jax_env, tmp_path):
    env = {**jax_env, "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_CPUS_ON_NODE": "2", multihost.TIMEOUT_ENV: "5"}
    r = subprocess.run([sys.executable, "-m", "testbed.launch.cli", "train", TINY_CFG, "--out", str(tmp_path / "run"),
                        "--no-progress", *(x for kv in FAST for x in ("--set", kv))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary.get("processes", 1) == 1


def test_a_coordinator_nobody_answers_is_one_line_not_a_hang():
    port = free_port()
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
           multihost.TIMEOUT_ENV: "1"}
    cfg = config.load(TINY_CFG, ["train.distributed=true"])
    t0 = time.monotonic()
    with pytest.raises(config.ConfigError) as e:
        sharding.initialize(cfg, env)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "2 processes" in msg and multihost.TIMEOUT_ENV in msg
    with pytest.raises(config.ConfigError, match=multihost.TIMEOUT_ENV):
        sharding.initialize(cfg, {**env, multihost.TIMEOUT_ENV: "soon"})


def test_a_coordinator_whose_peers_never_come_exits_2_with_one_line(jax_env, tmp_path):
    """Process 0 of 2 starts the coordinator and waits for process 1, which never starts: jax would abort after its
    own timeout with a stack trace; the watchdog says what it waited for and exits 2 first."""
    env = {**jax_env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "0", multihost.TIMEOUT_ENV: "2"}
    r = subprocess.run([sys.executable, "-m", "testbed.launch.cli", "train", TINY_CFG, "--out", str(tmp_path / "run"),
                        "--no-progress", "--set", "train.distributed=true"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = [x for x in r.stderr.splitlines() if "error" in x]
    assert line.startswith("testbed train: error: train.distributed: gave up after 2 s")
    assert "2 processes (this is process 0)" in line


def test_tpu_script_ships_the_checkout_to_every_worker(capsys, tmp_path):
    assert main(["launch", TINY_CFG, "--print", "--target", "tpu", "--tpu-name", "v4-32", "--zone", "us-central2-b",
                 "--out", "/mnt/shared/runs/a"]) == 0
    script = capsys.readouterr().out
    lines = [x for x in script.splitlines() if x and not x.startswith("#")]
    assert lines[0] == "set -euo pipefail" and lines[1] == f"cd {ROOT}"
    assert lines[2].startswith("rm -rf dist/testbed-tpu && python3 -m pip wheel --no-deps")
    ssh = "gcloud compute tpus tpu-vm ssh v4-32 --zone us-central2-b --worker=all --command"
    assert lines[3].startswith(ssh) and "mkdir -p testbed-run" in lines[3]
    scp = shlex.split(lines[4])
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and TINY_CFG in scp and "--worker=all" in scp
    assert "v4-32:testbed-run/" in scp
    install = shlex.split(lines[5])[-1]
    assert install.startswith("cd testbed-run && python3 -m pip install") and "[tpu]" in install
    train = shlex.split(shlex.split(lines[6])[-1])
    assert train[:7] == ["cd", "testbed-run", "&&", "python3", "-m", "testbed.launch.cli", "train"]
    assert train[7] == "tiny.yaml" and "train.distributed=true" in train and "/mnt/shared/runs/a" in train
    (path := tmp_path / "tpu.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid shell
