"""Claims, concurrent workers on one sweep, and `testbed status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.launch import backends, claims, runner, status, sweep

from .test_sweep import TINY, write_sweep

HOLD = """
import os, sys, time
from testbed.launch import claims
c = claims.try_claim(sys.argv[1], worker="holder")
print("claimed" if c else "busy", flush=True)
if len(sys.argv) > 2:  # hand the lock to a long-lived child, as runner.train_unit does with its trainer
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[c.fd])
    print("child", flush=True)
time.sleep(60)
"""


def _holder_proc(run_dir: Path, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), *extra], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout.readline().strip() == "claimed"
    return p


def test_claim_is_exclusive_and_released(tmp_path):
    c = claims.try_claim(tmp_path / "r", worker="w1")
    assert c is not None
    assert claims.try_claim(tmp_path / "r") is None  # a second open file description cannot take it
    who = claims.holder(tmp_path / "r")
    assert who["pid"] == os.getpid() and who["worker"] == "w1"
    c.release()
    assert claims.holder(tmp_path / "r") is None
    with claims.try_claim(tmp_path / "r") as again:
        assert again is not None


def test_a_dead_workers_claim_is_recovered_at_once(tmp_path):
    p = _holder_proc(tmp_path / "r")
    assert claims.try_claim(tmp_path / "r") is None
    assert claims.holder(tmp_path / "r")["pid"] == p.pid
    p.kill()
    p.wait()
    c = claims.try_claim(tmp_path / "r")  # the kernel dropped the dead process's lock: no lease to wait out
    assert c is not None
    c.release()


def test_a_claim_outlives_a_killed_worker_while_its_trainer_runs(tmp_path):
    p = _holder_proc(tmp_path / "r", "with-child")
    assert p.stdout.readline().strip() == "child"
    p.kill()  # the worker dies; its trainer (the child holding the inherited descriptor) does not
    p.wait()
    try:
        assert claims.try_claim(tmp_path / "r") is None
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the child is in the worker's session
    for _ in range(100):
        c = claims.try_claim(tmp_path / "r")
        if c is not None:
            break
        time.sleep(0.05)
    assert c is not None
    c.release()


def test_waves_order_branches_after_parents():
    after = {"a": None, "b": "a", "c": "b", "d": None, "e": "outside"}
    w = backends.waves([["a"], ["b"], ["c"], ["d"], ["e"]], after)
    assert w == [[["a"], ["d"], ["e"]], [["b"]], [["c"]]]


def test_four_concurrent_workers_train_each_run_exactly_once(tmp_path):
    spec = write_sweep(tmp_path, set=TINY, grid={"optim.lr": [1e-3, 2e-3, 4e-3], "seed": [0, 1]})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "testbed.launch.cli", "sweep", str(spec), "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    runs = sweep.expand(spec)
    assert len(runs) == 6
    for r in runs:
        log = (out / r.run_id / "train.log").read_text()
        assert log.count("=== ") == 1, log  # one trainer ever started for this run
        assert json.loads((out / r.run_id / "summary.json").read_text())["status"] == "completed"
    reports = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert all(rep["counts"] == {"completed": 6} for rep in reports)  # every worker waited for the others
    assert sum(rep["trained"] for rep in reports) >= 6

    st = status.sweep_status(out)
    assert st["counts"]["completed"] == 6 and st["runs_total"] == 6
    assert all(r["step"] == r["steps_total"] == 5 for r in st["runs"])


def test_status_shows_running_incomplete_and_pending(tmp_path, cli):
    spec = write_sweep(tmp_path, set=TINY, grid={"seed": [0, 1, 2]})
    out = tmp_path / "out"
    runs = sweep.expand(spec)
    sweep.write_sweep_files(sweep.load_spec(spec), runs, out, str(spec))
    a, b, _ = (out / r.run_id for r in runs)
    p = _holder_proc(a)
    b.mkdir(parents=True)
    (b / "config.yaml").write_text(sweep.config.dump_yaml(runs[1].cfg))
    (b / "metrics.jsonl").write_text(json.dumps({"step": 2, "train_loss": 3.5, "wall_s": 1.0}) + "\n")
    try:
        assert runner.run_status(a) == "running"
        res = cli("status", str(out), "--json")
        assert res.returncode == 0, res.stderr
        rep = json.loads(res.stdout)
        assert {k: v for k, v in rep["counts"].items() if v} == {"running": 1, "incomplete": 1, "pending": 1}
        by_id = {r["run_id"]: r for r in rep["runs"]}
        assert by_id[a.name]["holder"]["pid"] == p.pid
        assert by_id[b.name]["step"] == 2 and by_id[b.name]["train_loss"] == 3.5
        text = cli("status", str(out)).stdout
        assert "1 running, 1 incomplete" in text.replace("1 pending, ", "") and f"{p.pid}" in text
    finally:
        p.kill()
        p.wait()
    assert runner.run_status(a) == "pending"
    res = cli("status", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr
