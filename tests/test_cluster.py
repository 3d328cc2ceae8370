"""`testbed launch`: the sbatch script and the Cloud TPU VM command for one multi-host run."""

from __future__ import annotations

import shlex
import subprocess

from testbed.launch.cli import build_parser, main

from testbed import config as C
from testbed.preempt import REQUEUE_EXIT

from .conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")


def launch(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["launch", TINY, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def srun_argv(script: str) -> list[str]:
    (line,) = [x for x in script.splitlines() if x.startswith("srun ")]
    return shlex.split(line)[1:]


def test_slurm_script_requeues_on_the_requeue_code(capsys, tmp_path):
    rc, script, _ = launch(capsys, "--print", "--target", "slurm", "--nodes", "2", "--gpus-per-node", "8",
                           "--time", "02:00:00", "--partition", "gpu", "--out", "/shared/runs/big",
                           "--python", "/opt/venv/bin/python", "--set", "optim.lr=1e-3")
    assert rc == 0
    for piece in ("#!/bin/bash", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                  "#SBATCH --time=02:00:00", "#SBATCH --signal=USR1@90", "#SBATCH --requeue",
                  "#SBATCH --partition=gpu", f'if [ "$rc" -eq {REQUEUE_EXIT} ]; then',
                  '  scontrol requeue "$SLURM_JOB_ID"'):
        assert piece in script.splitlines(), piece
    (path := tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid shell
    argv = srun_argv(script)
    assert argv[:8] == ["/opt/venv/bin/python", "-m", "testbed.launch.cli", "train", TINY, "--out", "/shared/runs/big",
                        "--no-progress"]
    args = build_parser().parse_args(argv[3:])  # what every task runs, read by testbed's own parser
    cfg = C.load(args.config, args.overrides)
    assert cfg.optim.lr == 1e-3 and cfg.train.mesh == {"data": -1} and cfg.train.distributed is True
    assert C.identity(cfg) == C.identity(C.load(TINY, ["optim.lr=1e-3"]))  # the same run as a local one


def test_single_node_keeps_one_process_and_the_users_mesh(capsys):
    rc, script, _ = launch(capsys, "--print", "--target", "slurm", "--gpus-per-node", "4",
                           "--set", "train.mesh.fsdp=4")
    argv = srun_argv(script)
    assert rc == 0 and "train.mesh.fsdp=4" in argv
    assert not any(a.startswith("train.mesh.data") or a.startswith("train.distributed") for a in argv)
    assert "--out" in argv and argv[argv.index("--out") + 1].startswith("runs/tiny-")


def test_tpu_command_runs_on_every_worker(capsys):
    rc, text, _ = launch(capsys, "--print", "--target", "tpu", "--tpu-name", "v4-32", "--zone", "us-central2-b",
                         "--workdir", "/home/me/testbed", "--out", "gs-fuse/runs/a")
    assert rc == 0
    cmd = [x for x in text.splitlines() if x.startswith("gcloud ")][-1]  # the last: train (tests/test_multihost.py)
    argv = shlex.split(cmd)
    assert argv[:10] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32", "--zone", "us-central2-b",
                         "--worker=all", "--command"]
    remote = argv[10]
    assert remote.startswith("cd /home/me/testbed && python3 -m testbed.launch.cli train tiny.yaml ")
    assert "--set train.mesh.data=-1 --set train.distributed=true" in remote and "--out gs-fuse/runs/a" in remote


def test_launch_errors_name_the_flag(capsys, monkeypatch, tmp_path):
    rc, _, err = launch(capsys, "--print", "--target", "tpu", "--zone", "z")
    assert rc == 2 and "--tpu-name" in err
    rc, _, err = launch(capsys, "--print", "--target", "slurm", "--set", "train.mesh.model=2")
    assert rc == 2 and "train.mesh.model" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: submitting says to use --print
    rc, _, err = launch(capsys, "--target", "slurm")
    assert rc == 2 and "--print" in err


def test_submit_pipes_the_script_to_sbatch(capsys, monkeypatch, tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/bash\ncat > {tmp_path / 'submitted.sh'}\necho 'Submitted batch job 42'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    rc = main(["launch", TINY, "--target", "slurm", "--nodes", "2"])
    assert rc == 0
    assert "#SBATCH --signal=USR1@90" in (tmp_path / "submitted.sh").read_text()
