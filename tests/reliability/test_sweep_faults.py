"""Sweep-level faults: a diverging run (recorded, the sweep goes on, fits leave it out and say so), and four workers
on one sweep with one of them killed -9 together with its trainer mid-run (every run completes exactly once)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import yaml
from testbed.analysis import report
from testbed.launch import claims, sweep
from testbed.launch import cli as CLI

from ..test_load import summary as fake_summary
from ..test_load import write_run
from ..test_sweep import write_sweep
from .common import SETS, STEPS, checkpoints, rows

TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
# the suite's run config as a sweep's `set:` (the same programs as the reference run: compile-cache hits)
BASE = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in SETS)}


def _sweep_cmd(spec, out):
    return [sys.executable, "-m", "testbed.launch.cli", "sweep", str(spec), "--out", str(out), "--workers", "1",
            "--pack", "1"]


def test_a_diverging_run_is_recorded_the_sweep_goes_on_and_fits_exclude_it(jax_env, tmp_path, capsys):
    base = {k: v for k, v in BASE.items() if k != "optim.lr"}
    spec = write_sweep(tmp_path, set=base, grid={"optim.lr": [1e30, 1e-2]})  # the NaN run first; the other follows
    out = tmp_path / "out"
    r = subprocess.run(_sweep_cmd(spec, out), env=jax_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]  # diverged is a result, not a failure
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["counts"] == {"diverged": 1, "completed": 1} and rep["ok"]
    runs = {x.cfg.optim.lr: x.run_id for x in sweep.expand(spec)}
    div, good = out / runs[1e30], out / runs[1e-2]
    s = json.loads((div / "summary.json").read_text())
    assert s["status"] == "diverged" and s["steps"] < STEPS
    assert json.loads((good / "summary.json").read_text())["status"] == "completed"
    assert not np.isfinite(float(rows(div)[-1]["train_loss"])) or not np.isfinite(float(rows(div)[-1]["grad_norm"]))

    # too few usable points: refused, naming the diverged run it left out
    assert CLI.main(["fit", "chinchilla", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 usable points" in err and "excluded 1 run: 1 diverged" in err, err

    # enough points (synthetic completed runs) next to the real diverged run: fitted without it, and said so
    fitdir = tmp_path / "fit"
    shutil.copytree(div, fitdir / div.name)
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 5)))
    for i, (n, d) in enumerate(zip(N, D, strict=True)):
        loss = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
        write_run(fitdir, f"r{i:02d}", [f"seed={i}"], fake_summary(eval_loss=float(loss), n=int(n), tokens=float(d),
                                                                   flops=6 * n * d))
    assert CLI.main(["fit", "chinchilla", str(fitdir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    text = report.format_text(res)  # what `testbed fit` prints without --json
    assert "(20 points)" in text and "excluded 1 run: 1 diverged" in text, text
    assert res["n_points"] == 20 and res["excluded"]["diverged"] == 1
    assert abs(res["params"]["alpha"] - TRUE["alpha"]) < 0.01


def test_four_workers_one_killed_mid_run_every_run_completes_exactly_once(jax_env, tmp_path):
    spec = write_sweep(tmp_path, set=BASE, grid={"seed": [0, 1, 2, 3, 4]})
    out = tmp_path / "out"
    runs = sweep.expand(spec)
    procs = [subprocess.Popen(_sweep_cmd(spec, out), env=jax_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(4)]
    victim, killed_run, ckpt_at_kill = None, None, None
    deadline = time.time() + 240
    try:
        while victim is None and time.time() < deadline:
            for r in runs:
                d = out / r.run_id
                m = d / "metrics.jsonl"
                if m.exists() and not (d / "summary.json").exists() and checkpoints(d):
                    who = claims.holder(d)
                    if who and who.get("pid") in {p.pid for p in procs}:
                        victim = next(p for p in procs if p.pid == who["pid"])
                        os.killpg(victim.pid, signal.SIGKILL)  # the worker and the trainer it started, mid-run
                        killed_run, ckpt_at_kill = d, checkpoints(d)
                        break
            time.sleep(0.005)
        outs = {p.pid: p.communicate(timeout=300) for p in procs}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert victim is not None, "no run was caught mid-run"
    assert victim.returncode == -signal.SIGKILL
    survivors = [p for p in procs if p is not victim]
    assert all(p.returncode == 0 for p in survivors), [outs[p.pid][1][-2000:] for p in survivors]
    for p in survivors:  # every surviving worker waited until all runs were done, the killed one's included
        assert json.loads(outs[p.pid][0].strip().splitlines()[-1])["counts"] == {"completed": 5}
    for r in runs:
        d = out / r.run_id
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "completed" and s["steps"] == STEPS
        assert [x["step"] for x in rows(d)] == list(range(1, STEPS + 1))  # each step logged once
        log = (d / "train.log").read_text()
        starts = log.count("=== ")
        if d == killed_run:  # killed once, then resumed from its checkpoint by another worker
            assert starts == 2 and f"resuming {d} from step " in log, log[-2000:]
            resumed_from = int(log.split(f"resuming {d} from step ")[1].split()[0])
            assert resumed_from >= ckpt_at_kill[-1]
        else:
            assert starts == 1, log[-2000:]  # trained by one worker, once
        assert log.count(f"completed at step {STEPS}") == 1
        assert claims.holder(d) is None
