"""SIGTERM / SIGUSR1 (SLURM's pre-timeout signal): checkpoint at the next step, exit REQUEUE_EXIT, resume exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from testbed.launch import runner

from testbed.preempt import REQUEUE_EXIT, StopRequest
from testbed.runstore import RunDir

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
SETS = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "data.seq_len=32", "train.batch_size=8",
        "data.eval_sequences=16", "optim.lr=1e-2", "optim.warmup_steps=5", "train.sigma_every=0",
        "train.steps=200", "train.eval_every=40", "train.checkpoint_every=50"]
ARGS = [x for kv in SETS for x in ("--set", kv)] + ["--no-progress"]
CURVE_KEYS = ("step", "tokens", "flops", "lr", "train_loss", "grad_norm", "param_norm", "update_ratio", "eval_loss")


def curve(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows]


def checkpoints(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def train_cmd(out) -> list[str]:
    return [sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out", str(out), *ARGS]


@pytest.fixture(scope="module")
def uninterrupted(jax_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("preempt") / "full"
    r = subprocess.run(train_cmd(out), env=jax_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_exits_requeue_and_resumes_exactly(sig, uninterrupted, jax_env, tmp_path):
    cut = tmp_path / "cut"
    proc = subprocess.Popen(train_cmd(cut), env=jax_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics, sent = cut / "metrics.jsonl", False
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=240)
    assert sent, "the run ended before it could be signalled"
    assert proc.returncode == REQUEUE_EXIT, err[-4000:]
    assert json.loads(out.strip().splitlines()[-1])["status"] == "incomplete"
    assert f"stopped by {sig.name}" in err
    assert not (cut / "summary.json").exists()  # a requeued run never looks complete
    rows = curve(cut)
    stopped_at = rows[-1]["step"]
    assert 10 <= stopped_at < 200 and [r["step"] for r in rows] == list(range(1, stopped_at + 1))
    assert checkpoints(cut)[-1] == stopped_at  # saved where it stopped, not at the last periodic checkpoint
    assert runner.run_status(cut) == "incomplete"

    r = subprocess.run(train_cmd(cut), env=jax_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resuming {cut} from step {stopped_at}" in r.stderr
    assert curve(cut) == curve(uninterrupted)  # every logged value, bitwise (CPU)
    full, resumed = (json.loads((d / "summary.json").read_text()) for d in (uninterrupted, cut))
    for k in ("status", "steps", "tokens", "final_train_loss", "final_eval_loss"):
        assert resumed[k] == full[k]


def test_requeue_exit_is_reported_incomplete_not_failed(tmp_path):
    """The sweep runner's status for a trainer that exited REQUEUE_EXIT without a summary."""
    assert runner.REQUEUE_EXIT == REQUEUE_EXIT == 75
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert runner._result(tmp_path, REQUEUE_EXIT, 1.0)["status"] == "incomplete"
    assert runner._result(tmp_path, 1, 1.0)["status"] == "failed"
    assert RunDir(tmp_path).status() == "incomplete"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_stop_request_catches_each_stop_signal_and_restores_the_handlers(sig):
    """Each documented stop signal sets the flag the loop polls (the end-to-end checkpoint-and-requeue path is
    the same for all three; test_signal_checkpoints_... runs it for SIGTERM and SIGUSR1)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    with StopRequest() as stop:
        assert not stop()
        signal.raise_signal(sig)
        assert stop() and stop.describe() == sig.name
    assert {s: signal.getsignal(s) for s in before} == before
    assert StopRequest(also=lambda: True)()
