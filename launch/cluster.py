"""One large run over several hosts: the sbatch script (SLURM) or the gcloud command (Cloud TPU VM) that starts it.

Every host runs the same `testbed train` command; jax.distributed.initialize() joins them (train.distributed) and
train.mesh lays the devices out (default here: `{data: -1}`, data parallel over every device). On SLURM the job
asks for SIGUSR1 `signal_lead_s` seconds before its time limit; the trainer checkpoints, exits REQUEUE_EXIT (75)
and the script requeues the job, whose identical command resumes. Nothing here imports jax.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testbed import config
from testbed.config import ConfigError
from testbed.preempt import REQUEUE_EXIT


@dataclass
class Slurm:
    nodes: int = 1
    gpus_per_node: int = 1
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    signal_lead_s: int = 90  # SIGUSR1 this long before the time limit: time to checkpoint
    job_name: str = "testbed"


@dataclass
class Tpu:
    name: str
    zone: str
    project: str | None = None


def train_argv(cfg_path: str, out: str, overrides: list[str], cfg: config.Config, multi_host: bool,
               python: str = "python") -> list[str]:
    """The `testbed train` command every host runs: the user's overrides, plus a mesh and distributed setup."""
    sets = list(overrides)
    if not cfg.train.mesh and not any(o.split("=", 1)[0].startswith("train.mesh") for o in sets):
        sets.append("train.mesh.data=-1")  # data parallel over every device of every host
    if multi_host and cfg.train.distributed is None and not any(o.startswith("train.distributed=") for o in sets):
        sets.append("train.distributed=true")
    return [python, "-m", "testbed.launch.cli", "train", cfg_path, "--out", out, "--no-progress",
            *(x for kv in sets for x in ("--set", kv))]


def slurm_script(train: list[str], job: Slurm, workdir: str | Path) -> str:
    """An sbatch script: one task per node, SIGUSR1 before the time limit, requeue on REQUEUE_EXIT."""
    if job.nodes < 1 or job.gpus_per_node < 0:
        raise ConfigError(f"--nodes / --gpus-per-node: need nodes >= 1 and gpus >= 0, got {job.nodes}, "
                          f"{job.gpus_per_node}")
    opts = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
            *([f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []),
            *([f"--cpus-per-task={job.cpus_per_task}"] if job.cpus_per_task else []),
            f"--time={job.time}", f"--signal=USR1@{job.signal_lead_s}", "--requeue", "--open-mode=append",
            "--output=%x-%j.out", f"--chdir={workdir}",
            *([f"--partition={job.partition}"] if job.partition else []),
            *([f"--account={job.account}"] if job.account else [])]
    return "\n".join([
        "#!/bin/bash",
        *(f"#SBATCH {o}" for o in opts),
        "",
        f"# SIGUSR1 ({job.signal_lead_s} s before the time limit) or SIGTERM (preemption) makes `testbed train` save a",
        f"# checkpoint and exit {REQUEUE_EXIT}; the job then requeues itself and this same command resumes the run.",
        "export PYTHONUNBUFFERED=1",
        f"srun {shlex.join(train)}",
        "rc=$?",
        f'if [ "$rc" -eq {REQUEUE_EXIT} ]; then',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$rc"',
        "",
    ])


def tpu_argv(train: list[str], tpu: Tpu, workdir: str | Path) -> list[str]:
    """`gcloud compute tpus tpu-vm ssh NAME --worker=all`: the same command on every TPU VM worker."""
    if not tpu.name or not tpu.zone:
        raise ConfigError("--tpu-name / --zone: a Cloud TPU VM target needs both (e.g. --tpu-name my-v4-32 "
                          "--zone us-central2-b)")
    remote = f"cd {shlex.quote(str(workdir))} && {shlex.join(train)}"
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, "--zone", tpu.zone,
            *(["--project", tpu.project] if tpu.project else []), "--worker=all", "--command", remote]


def tpu_text(argv: list[str]) -> str:
    """The gcloud command, with how to resume: TPU VMs have no scheduler to requeue the run."""
    return "\n".join([
        f"# Exit {REQUEUE_EXIT} (SIGTERM on preemption: checkpointed) or a lost VM: run this again to resume.",
        shlex.join(argv),
        "",
    ])


def render(target: str, cfg: config.Config, cfg_path: str, overrides: list[str], out: str, workdir: str | Path,
           python: str | None, slurm: Slurm, tpu: Tpu | None) -> tuple[str, list[str], str | None]:
    """(text to print, the command that submits it, its stdin): an sbatch script, or the gcloud command."""
    multi = target == "tpu" or slurm.nodes > 1
    python = python or ("python3" if target == "tpu" else sys.executable)
    train = train_argv(cfg_path, out, overrides, cfg, multi, python)
    if target == "slurm":
        script = slurm_script(train, slurm, workdir)
        return script, ["sbatch"], script
    argv = tpu_argv(train, tpu or Tpu("", ""), workdir)
    return tpu_text(argv), argv, None


def submit(target: str, argv: list[str], stdin: str | None) -> int:
    """Runs the submitting command (sbatch reading the script, or gcloud) here; its exit status."""
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"--target {target}: {argv[0]} is not on PATH here; use --print and run the "
                          "output where it is (a SLURM login node, a machine with gcloud)")
    print(f"running: {shlex.join(argv)}", file=sys.stderr)
    return subprocess.run(argv, input=stdin, text=True).returncode
