"""SLURM (submitit's local executor) and Ray backends on real tiny sweeps, including a preempt-and-requeue."""

from __future__ import annotations

import json
import os
import time

import pytest
from testbed.launch import backends, runner, sweep

from testbed import config as C

from .test_sweep import TINY, write_sweep


def _completed(out, runs):
    return [json.loads((out / r.run_id / "summary.json").read_text())["status"] for r in runs]


def _children(pid: int) -> list[int]:
    tasks = os.listdir(f"/proc/{pid}/task")
    return [int(c) for t in tasks for c in open(f"/proc/{pid}/task/{t}/children").read().split()]


def test_slurm_backend_runs_a_job_array(tmp_path):
    pytest.importorskip("submitit")
    spec = write_sweep(tmp_path, set=TINY, grid={"seed": [0, 1]},
                       resources={"slurm": {"cluster": "local", "timeout_min": 10}})
    out = tmp_path / "out"
    logs = []
    summary = sweep.run_sweep(spec, out, backend="slurm", log=logs.append)
    assert summary["ok"] and summary["counts"] == {"completed": 2}, logs
    assert _completed(out, sweep.expand(spec)) == ["completed", "completed"]
    assert any("submitted 2 task(s)" in line for line in logs)
    again = sweep.run_sweep(spec, out, backend="slurm", log=logs.append)  # idempotent: nothing resubmitted
    assert again["trained"] == 0 and again["counts"] == {"completed": 2}


def test_slurm_preemption_checkpoints_requeues_and_resumes(tmp_path):
    submitit = pytest.importorskip("submitit")
    long = {**TINY, "train.steps": 400, "train.checkpoint_every": 20, "train.eval_every": 400}
    spec = write_sweep(tmp_path, set=long, grid={"seed": [0]})
    out = tmp_path / "out"
    (run,) = sweep.expand(spec)
    rd = out / run.run_id
    sweep.write_sweep_files(sweep.load_spec(spec), [run], out, str(spec))
    sweep.RunDir(rd).check_or_write_config(run.cfg)
    ex = backends.slurm_executor(out, {"cluster": "local", "timeout_min": 10})
    job = ex.submit(backends.UnitTask(), [str(rd)])
    deadline = time.time() + 120
    metrics = rd / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 30):
        time.sleep(0.2)
    assert runner.run_status(rd) == "running"
    # SLURM's pre-timeout/preemption signal goes to the job step's task, i.e. submitit's worker process (the local
    # controller does not forward it): submitit calls UnitTask.checkpoint (our trainer saves) and requeues.
    (task_pid,) = _children(job._process.pid)
    os.kill(task_pid, submitit.JobEnvironment._usr_sig())
    (res,) = job.result()
    assert res["status"] == "completed", res
    log = (rd / "train.log").read_text()
    assert log.count("=== ") == 2 and "resuming" in log  # trained in two pieces
    steps = [json.loads(line)["step"] for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))  # one continuous curve: no gap, no repeated step


def test_ray_backend_runs_tasks_on_a_local_cluster(tmp_path):
    pytest.importorskip("ray")
    # each task asks for a TPU chip of a local cluster that has two (a custom resource: Ray only counts it)
    spec = write_sweep(tmp_path, set=TINY, grid={"seed": [0, 1]},
                       resources={"ray": {"init_num_cpus": 2, "init_resources": {"TPU": 2}, "num_cpus": 1,
                                          "resources": {"TPU": 1}}})
    out = tmp_path / "out"
    logs = []
    summary = sweep.run_sweep(spec, out, backend="ray", log=logs.append)
    assert summary["ok"] and summary["counts"] == {"completed": 2}, logs
    assert _completed(out, sweep.expand(spec)) == ["completed", "completed"]


def test_ray_tasks_ask_for_the_devices_in_the_sweep_file():
    pytest.importorskip("ray")
    init, task = backends.ray_options({"address": "auto", "num_gpus": 1, "resources": {"TPU": 4},
                                       "accelerator_type": "TPU-V4", "init_resources": {"TPU": 8}})
    assert init == {"address": "auto", "num_cpus": None, "resources": None}  # an existing cluster: not ours to size
    assert task == {"num_cpus": 1, "num_gpus": 1, "max_retries": 3, "resources": {"TPU": 4},
                    "accelerator_type": "TPU-V4"}
    init, task = backends.ray_options({"init_resources": {"TPU": 8}})
    assert init["resources"] == {"TPU": 8} and "resources" not in task
    with pytest.raises(C.ConfigError, match="resources.ray.resources: expected a mapping"):
        backends.ray_options({"resources": {"TPU": "four"}})


def test_backend_settings_are_checked(tmp_path):
    spec = write_sweep(tmp_path, set=TINY, resources={"ray": {"num_cpu": 1}})
    with pytest.raises(C.ConfigError, match="resources.ray: unknown key 'num_cpu'"):
        sweep.run_sweep(spec, tmp_path / "out", backend="ray")
    spec = write_sweep(tmp_path, set=TINY, resources={"kubernetes": {}})
    with pytest.raises(C.ConfigError, match="resources.kubernetes"):
        sweep.load_spec(spec)
