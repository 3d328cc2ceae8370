"""One large run over several hosts: the sbatch script (SLURM) or the script that ships the code to a Cloud TPU VM
and starts it there.

Every host runs the same `testbed train` command; jax.distributed.initialize() joins them (train.distributed) and
train.mesh lays the devices out (default here: `{data: -1}`, data parallel over every device). On SLURM the job
asks for SIGUSR1 `signal_lead_s` seconds before its time limit; the trainer checkpoints, exits REQUEUE_EXIT (75)
and the script requeues the job, whose identical command resumes. Nothing here imports jax.

SLURM: one process per node, owning all of its GPUs (`--ntasks-per-node=1 --gpus-per-node=G`; testbed/sharding.py
passes jax.distributed.initialize `local_device_ids=0..G-1`), rather than one process per GPU. Every process of a
run builds the whole step's batch on its host and compiles the step itself, so one process per node does that
once per node instead of G times; the mesh's devices inside a node talk within one process; and it is the TPU VM's
model (one process per host owning every chip), so both targets run the same way.

TPU VM: the workers do not have this checkout, so the script builds a wheel of it here, copies the wheel and the
config to every worker (`gcloud compute tpus tpu-vm scp --worker=all`), installs it there with the `tpu` extra
(jax[tpu]) and runs the command on every worker.
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
    """An sbatch script: one task per node owning the node's GPUs, SIGUSR1 before the time limit, requeue on
    REQUEUE_EXIT."""
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
        f"# One process per node owns its {job.gpus_per_node} GPU(s): jax.distributed.initialize gets them all as "
        "local_device_ids.",
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


def project_root() -> Path:
    """The checkout this testbed runs from (the wheel is built from it); ConfigError for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError("--target tpu: ships the code from a testbed checkout (a directory with pyproject.toml); "
                          "run testbed launch from a checkout installed with pip install -e .")
    return root


def tpu_script(train: list[str], cfg_path: str, tpu: Tpu, workdir: str, root: Path) -> str:
    """Build a wheel here, copy it and the config to every worker, pip install it with the tpu extra, run."""
    if not tpu.name or not tpu.zone:
        raise ConfigError("--tpu-name / --zone: a Cloud TPU VM target needs both (e.g. --tpu-name my-v4-32 "
                          "--zone us-central2-b)")
    where = ["--zone", tpu.zone, *(["--project", tpu.project] if tpu.project else []), "--worker=all"]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, *where, "--command"]
    wd, dist = shlex.quote(workdir), "dist/testbed-tpu"
    install = f'cd {wd} && python3 -m pip install --upgrade "$(ls testbed-*.whl | tail -n 1)[tpu]"'
    return "\n".join([
        "#!/bin/bash",
        f"# Cloud TPU VM {tpu.name} ({tpu.zone}): ship this checkout to every worker, install it with the tpu extra,",
        f"# train. Exit {REQUEUE_EXIT} (SIGTERM on preemption: checkpointed) or a lost VM: run this again to resume.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(root))}",
        f"rm -rf {dist} && python3 -m pip wheel --no-deps --quiet -w {dist} .",
        shlex.join([*ssh, f"mkdir -p {wd} && rm -f {wd}/testbed-*.whl"]),
        f"gcloud compute tpus tpu-vm scp {dist}/testbed-*.whl {shlex.quote(str(Path(cfg_path).resolve()))} "
        f"{shlex.quote(f'{tpu.name}:{workdir}/')} {shlex.join(where)}",
        shlex.join([*ssh, install]),
        shlex.join([*ssh, f"cd {wd} && {shlex.join(train)}"]),
        "",
    ])


def render(target: str, cfg: config.Config, cfg_path: str, overrides: list[str], out: str,
           workdir: str | Path | None, python: str | None, slurm: Slurm, tpu: Tpu | None
           ) -> tuple[str, list[str], str | None]:
    """(text to print, the command that submits it, its stdin): an sbatch script, or the TPU VM script for bash.
    workdir: where the hosts run (default: here for SLURM, `testbed-run` under each TPU worker's home)."""
    multi = target == "tpu" or slurm.nodes > 1
    python = python or ("python3" if target == "tpu" else sys.executable)
    if target == "slurm":
        train = train_argv(cfg_path, out, overrides, cfg, multi, python)
        script = slurm_script(train, slurm, workdir or Path.cwd())
        return script, ["sbatch"], script
    train = train_argv(Path(cfg_path).name, out, overrides, cfg, multi, python)  # the copy in the workdir
    script = tpu_script(train, cfg_path, tpu or Tpu("", ""), str(workdir or "testbed-run"), project_root())
    return script, ["bash", "-s"], script


def submit(target: str, argv: list[str], stdin: str | None) -> int:
    """Runs the submitting command (sbatch, or bash running the TPU script) here; its exit status."""
    needs = "gcloud" if target == "tpu" else argv[0]
    if shutil.which(needs) is None:
        raise ConfigError(f"--target {target}: {needs} is not on PATH here; use --print and run the "
                          "output where it is (a SLURM login node, a machine with gcloud)")
    print(f"running: {shlex.join(argv)}", file=sys.stderr)
    return subprocess.run(argv, input=stdin, text=True).returncode
