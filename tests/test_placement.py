"""Device-aware local sweeps on pretended accelerators: a worker per GPU seeing only its own, packs spread over
them, mesh runs on several GPUs, one worker for a TPU VM's chips; detection without jax; the compilation cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from testbed.launch import backends, devices, placement, plan, runner, sweep
from testbed.launch.cli import main

from testbed import config

from .conftest import ROOT
from .test_sweep import TINY, write_sweep

ISOFLOP = str(ROOT / "configs" / "isoflop.yaml")


def _runs(tmp_path, **spec):
    return [(r.run_id, r.cfg, 10.0) for r in sweep.expand(write_sweep(tmp_path, set=TINY, **spec))]


def test_isoflop_dry_run_on_eight_gpus_gives_each_worker_its_own_device(capsys):
    assert main(["sweep", ISOFLOP, "--dry-run", "--json", "--accelerators", "gpu:8"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all({"run_id", "flops", "est_s", "status"} <= set(r) for r in rows)  # today's fields stay
    seen = {}
    for r in rows:
        p = r["placement"]
        assert p["devices"] == [p["env"]["CUDA_VISIBLE_DEVICES"]] and p["pack"] == 1
        seen.setdefault(p["worker"], set()).add(p["env"]["CUDA_VISIBLE_DEVICES"])
    assert sorted(seen) == list(range(8)) and sorted(d for s in seen.values() for d in s) == [str(i) for i in
                                                                                              range(8)]
    assert main(["sweep", ISOFLOP, "--dry-run", "--accelerators", "gpu:8"]) == 0
    err = capsys.readouterr().err
    assert "one worker per GPU" in err and "CUDA_VISIBLE_DEVICES=7" in err


def test_same_shape_runs_are_packed_and_spread_over_every_gpu(tmp_path):
    runs = _runs(tmp_path, grid={"optim.lr": [1e-3, 2e-3, 4e-3, 8e-3], "seed": [0, 1, 2, 3, 4, 5, 6, 7]})
    p = plan.plan(runs, accel=devices.parse("gpu:8"), log=lambda _: None)
    assert [len(u) for u in p.units] == [4] * 8 and p.layout.pack == 4  # 32 runs / 8 GPUs
    assert sorted(w.env["CUDA_VISIBLE_DEVICES"] for w in p.slots) == [str(i) for i in range(8)]
    assert all(len(w.units) == 1 for w in p.slots)
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in p.env  # each process has its GPU to itself
    p = plan.plan(runs, pack=16, accel=devices.parse("gpu:8"), log=lambda _: None)
    assert [len(u) for u in p.units] == [16, 16] and len(p.slots) == 2
    p = plan.plan(runs, workers=16, pack=2, accel=devices.parse("gpu:8"), log=lambda _: None)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in p.slots] == [str(i % 8) for i in range(16)]
    assert all(w.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for w in p.slots)  # two processes per GPU


def test_a_mesh_run_gets_as_many_gpus_as_its_mesh(tmp_path):
    runs = _runs(tmp_path, grid={"seed": [0, 1, 2, 3, 4, 5]})
    raw = config.to_dict(runs[0][1])
    raw["train"]["mesh"] = {"data": 2, "fsdp": 2}
    runs[0] = (runs[0][0], config.from_dict(raw), 100.0)
    p = plan.plan(runs, pack=1, accel=devices.parse("gpu:8"), log=lambda _: None)
    (mesh,) = [w for w in p.slots if len(w.devices) > 1]
    assert mesh.devices == ("0", "1", "2", "3") and mesh.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert [p.units[u] for u in mesh.units] == [[runs[0][0]]]
    singles = [w for w in p.slots if len(w.devices) == 1]
    assert sorted(rid for w in singles for u in w.units for rid in p.units[u]) == sorted(r[0] for r in runs[1:])
    with pytest.raises(config.ConfigError, match="train.mesh.*needs 16 devices"):
        placement.mesh_devices({"data": 16}, 8)
    assert placement.mesh_devices({"data": -1}, 8) == 8 and placement.mesh_devices({"data": 2, "fsdp": -1}, 8) == 8


def test_tpu_vm_has_one_worker_owning_every_chip(tmp_path, capsys, monkeypatch):
    runs = _runs(tmp_path, grid={"optim.lr": [1e-3, 2e-3, 4e-3], "seed": [0, 1, 2, 3]})
    p = plan.plan(runs, accel=devices.parse("tpu:4"), log=lambda _: None)
    (w,) = p.slots
    assert w.devices == ("0", "1", "2", "3") and w.env == {} and p.layout.pack == 8
    assert [len(u) for u in p.units] == [8, 4] and w.units == [0, 1]
    with pytest.raises(config.ConfigError, match="--workers: a TPU VM"):
        plan.plan(runs, workers=2, accel=devices.parse("tpu:4"))
    raw = config.to_dict(runs[0][1])
    raw["train"]["mesh"] = {"data": 2}
    with pytest.raises(config.ConfigError, match="train.mesh.*set one axis to -1"):
        plan.plan([(runs[0][0], config.from_dict(raw), 1.0)], accel=devices.parse("tpu:4"))
    monkeypatch.setenv(devices.ENV_VAR, "tpu:4")  # the environment variable does what the flag does
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["placement"]["worker"] for r in rows} == {0}
    assert all(r["placement"]["devices"] == ["0", "1", "2", "3"] for r in rows)


def test_bad_accelerators_exit_2_and_cpu_stays_as_today(tmp_path, capsys, monkeypatch):
    path = str(write_sweep(tmp_path, set=TINY, grid={"seed": [0, 1]}))
    assert main(["sweep", path, "--dry-run", "--accelerators", "gpu:x"]) == 2
    assert "--accelerators: expected KIND:N" in capsys.readouterr().err
    monkeypatch.setenv(devices.ENV_VAR, "fpga:2")
    assert main(["sweep", path, "--dry-run"]) == 2
    assert devices.ENV_VAR in capsys.readouterr().err
    monkeypatch.delenv(devices.ENV_VAR)
    with pytest.raises(config.ConfigError, match="--accelerators: places runs on this machine"):
        sweep.run_sweep(path, tmp_path / "out", backend="slurm", accelerators="gpu:2")
    assert not (tmp_path / "out").exists()
    assert main(["sweep", path, "--dry-run", "--json", "--accelerators", "none"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["placement"]["worker"] is None and r["placement"]["devices"] == [] for r in rows)
    p = plan.plan(_runs(tmp_path, grid={"seed": [0, 1]}), workers=2, pack=1, log=lambda _: None)
    assert [w.units for w in p.slots] == [None, None] and all(w.devices == () for w in p.slots)


def test_detection_reads_nvidia_smi_and_cuda_visible_devices(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor i in 0 1 2 3; do echo \"GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-abc$i)\"; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    acc = devices.detect(env={})
    assert acc.kind == "gpu" and acc.ids == ("0", "1", "2", "3") and acc.name == "NVIDIA H100 80GB HBM3"
    assert devices.detect(env={"CUDA_VISIBLE_DEVICES": "2,3"}).ids == ("2", "3")
    assert devices.detect(env={"CUDA_VISIBLE_DEVICES": ""}).kind == "cpu"
    assert devices.detect(env={"JAX_PLATFORMS": "cpu"}).kind == "cpu"  # the trainers would not use them
    assert devices.detect("gpu:2", env={"JAX_PLATFORMS": "cpu"}).ids == ("0", "1")  # pretend wins


def test_workers_on_shared_gpus_never_overlap(tmp_path, monkeypatch):
    """run_local: each unit on its own worker with that worker's CUDA_VISIBLE_DEVICES; the mesh unit waits until
    every GPU it needs is free."""
    runs = _runs(tmp_path, grid={"seed": [0, 1, 2, 3, 4]})
    raw = config.to_dict(runs[2][1])
    raw["train"]["mesh"] = {"data": -1}
    runs[2] = (runs[2][0], config.from_dict(raw), 10.0)
    p = plan.plan(runs, pack=1, accel=devices.parse("gpu:2"), log=lambda _: None)
    spans, lock = [], threading.Lock()

    def fake_train_unit(dirs, env, cores, worker, on_start):
        t0 = time.monotonic()
        time.sleep(0.2)
        with lock:
            spans.append((dirs[0].name, env["CUDA_VISIBLE_DEVICES"], t0, time.monotonic()))
        return [{"run_id": d.name, "status": "completed", "wall_s": 0.2} for d in dirs]

    monkeypatch.setattr(runner, "train_unit", fake_train_unit)
    results = []
    backends.run_local(p.units, tmp_path, {}, p.slots, p.env, print, results.append, poll_s=0.05)
    assert sorted(r["run_id"] for r in results) == sorted(r[0] for r in runs)
    where = {rid: w.env["CUDA_VISIBLE_DEVICES"] for w in p.slots for u in w.units for rid in p.units[u]}
    assert {rid: dev for rid, dev, _, _ in spans} == where and where[runs[2][0]] == "0,1"
    (mesh,) = [s for s in spans if s[1] == "0,1"]
    assert all(s[3] <= mesh[2] or s[2] >= mesh[3] for s in spans if s is not mesh)  # never at once


def test_pretend_gpus_train_a_real_sweep_and_share_a_compilation_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")  # the sweep's own cache, not the test session's
    spec = write_sweep(tmp_path, set=TINY, grid={"seed": [0, 1]})
    out = tmp_path / "out"
    logs = []
    summary = sweep.run_sweep(spec, out, accelerators="gpu:2", log=logs.append)
    assert summary["ok"] and summary["counts"] == {"completed": 2}, logs
    assert any("one worker per GPU" in s for s in logs)
    assert any((out / runner.CACHE_DIR).iterdir())  # the workers wrote compiled programs there


def test_trainer_env_carries_the_sweep_cache_unless_one_is_set(tmp_path):
    env = runner.trainer_env(tmp_path, {"PATH": "/bin"})
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path.resolve() / ".jax_cache")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "0"
    mine = runner.trainer_env(tmp_path, {"JAX_COMPILATION_CACHE_DIR": "/elsewhere"})
    assert mine["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


def test_a_second_identical_run_reads_its_program_from_the_cache(tmp_path):
    """Two fresh `testbed train` runs of one shape with a sweep worker's environment: the second's compile_s is
    a cache read (bench/compile_cache.py: 4.0-4.8 s -> 0.5-0.7 s for configs/tiny.yaml on 2 cores)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(config.dump_yaml(config.load(ROOT / "configs" / "tiny.yaml", [f"{k}={v}" for k, v in TINY.items()])))
    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env = runner.trainer_env(tmp_path, {**base, "JAX_PLATFORMS": "cpu"})
    compile_s = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-m", "testbed.launch.cli", "train", str(cfg), "--out", str(tmp_path / name),
                        "--no-progress"], check=True, capture_output=True, env=env)
        compile_s.append(json.loads((tmp_path / name / "summary.json").read_text())["compile_s"])
    assert any((tmp_path / runner.CACHE_DIR).iterdir())
    assert compile_s[1] < compile_s[0], compile_s
