from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testbed import config as C
from testbed import schedules
from testbed.model import param_info
from testbed.optim import make_optimizer
from testbed.train import init_state, make_train_step, train

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["model.d_model=32", "model.n_heads=2", "data.seq_len=32", "train.batch_size=8", "data.eval_sequences=16",
        "optim.lr=1e-2", "optim.warmup_steps=5"]

CURVE_KEYS = ("step", "tokens", "flops", "lr", "train_loss", "grad_norm", "param_norm", "update_ratio")


def curve(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in (*CURVE_KEYS, "eval_loss") if k in r} for r in rows]


def test_train_writes_complete_run_dir(tmp_path):
    cfg = C.load(TINY, [*FAST, "train.steps=30", "train.eval_every=10", "train.checkpoint_every=10",
                        "optim.weight_decay=0.1", "train.sigma_every=15"])
    s = train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    run = tmp_path / "run"
    assert s["status"] == "completed" and s["steps"] == 30 and s["tokens"] == 30 * 8 * 32
    assert C.from_dict(__import__("yaml").safe_load((run / "config.yaml").read_text())) == cfg
    rows = curve(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20, 30]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] < math.log(256)  # it learns
    assert s["final_eval_loss"] == rows[-1]["eval_loss"]
    assert s["data_entropy"] is not None and 0 < s["data_entropy"] < math.log(256)
    assert s["final_eval_loss"] > s["data_entropy"]  # cannot beat the Bayes floor
    sched = schedules.from_config(cfg.optim, 30)
    np.testing.assert_allclose([r["lr"] for r in rows], [cfg.optim.lr * float(sched(i)) for i in range(30)],
                               rtol=1e-6)
    assert s["flops"] == s["tokens"] * s["flops_per_token"]
    # the weight-decay diagnostics: sigma_max every 15 steps (and at the end), tau_iter per group
    raw = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw if "sigma_max" in r] == [15, 30]
    assert set(raw[-1]["sigma_max"]) >= {"block_0/mlp/up/kernel", "readout/kernel", "embed/embedding"}
    assert s["final_sigma_max"] == raw[-1]["sigma_max"]
    hidden = s["param_groups"]["hidden:32"]
    assert hidden["tau_iter"] == pytest.approx(1 / (1e-2 * 0.1)) and s["param_groups"]["vector:1"]["tau_iter"] is None
    norm = s["final_sigma_normalized"]["block_0/mlp/up/kernel"]
    assert norm == pytest.approx(raw[-1]["sigma_max"]["block_0/mlp/up/kernel"] / (math.sqrt(1e-2 / 0.1) * 32 ** 0.75))
    assert s["parametrization"]["name"] == "sp" and s["parametrization"]["residual_mult"] == 1.0
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20, 30]
    # a completed run is not trained again
    again = train(cfg, run, progress=False, log=lambda _: None)
    assert again == json.loads((run / "summary.json").read_text())
    assert len(curve(run)) == 30


def test_different_config_in_existing_run_dir_is_refused(tmp_path):
    cfg = C.load(TINY, [*FAST, "train.steps=6"])
    train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    other = C.load(TINY, [*FAST, "train.steps=6", "optim.lr=0.1"])
    with pytest.raises(C.ConfigError, match="optim.lr"):
        train(other, tmp_path / "run", progress=False, log=lambda _: None)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before


def test_nan_loss_is_recorded_as_diverged(tmp_path):
    cfg = C.load(TINY, [*FAST, "train.steps=40", "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=null",
                        "optim.schedule=constant", "train.sigma_every=1"])
    s = train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert s["status"] == "diverged"
    def strict(c):
        raise ValueError(f"bare {c} in JSON")
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():  # NaN sigma_max kept as strings
        json.loads(line, parse_constant=strict)
    json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=strict)
    assert s["steps"] < 40
    rows = curve(tmp_path / "run")
    assert not math.isfinite(float(rows[-1]["train_loss"])) or not math.isfinite(float(rows[-1]["grad_norm"]))


def test_grad_accumulation_matches_full_batch():
    base = C.load(TINY, [*FAST, "train.steps=6"])
    accum = C.load(TINY, [*FAST, "train.steps=6", "train.grad_accum=4"])
    out = []
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32 for f32 matmuls
        for cfg in (base, accum):
            out.append(_one_step(cfg))
    (m1, p1), (m2, p2) = out
    assert float(m1["train_loss"]) == pytest.approx(float(m2["train_loss"]), rel=1e-5)
    assert float(m1["grad_norm"]) == pytest.approx(float(m2["grad_norm"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # one Adam step amplifies f32 summation-order noise


def _one_step(cfg):
    tx = make_optimizer(cfg, param_info(_params(cfg)))
    step = jax.jit(make_train_step(cfg, tx))
    state = init_state(cfg, tx)
    batch = np.random.default_rng(0).integers(0, 256, (8, 33)).astype(np.int32)
    A = cfg.train.grad_accum
    state, m = step(state, jnp.asarray(batch.reshape(A, 8 // A, 33)))
    return m, state["params"]


def _params(cfg):
    from testbed.model import init_params

    return init_params(cfg, jax.random.key(cfg.seed))


def test_kill_and_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    args = ["--set", "train.steps=150", "--set", "train.checkpoint_every=25", "--set", "train.eval_every=25",
            *[x for kv in FAST for x in ("--set", kv)], "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out", str(full), *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out", str(cut), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = [int(p.name) for p in (cut / "checkpoints").glob("*") if p.name.isdigit()] \
            if (cut / "checkpoints").exists() else []
        n_rows = len((cut / "metrics.jsonl").read_text().splitlines()) if (cut / "metrics.jsonl").exists() else 0
        if ckpts and max(ckpts) >= 50 and n_rows > max(ckpts) + 3:
            proc.send_signal(signal.SIGKILL)
            killed_at = n_rows
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None and killed_at < 150, "the run finished before it could be killed"
    assert not (cut / "summary.json").exists()  # a killed run never looks complete
    r = subprocess.run([sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out", str(cut), *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    if jax.default_backend() == "cpu":
        assert curve(cut) == curve(full)  # every logged value, bitwise (JSON floats round-trip exactly)
    else:  # GPU reductions (atomics) are not run-to-run deterministic: equal up to float noise
        for a, b in zip(curve(cut), curve(full), strict=True):
            assert a.keys() == b.keys() and a["step"] == b["step"] and a["lr"] == b["lr"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    s_full = json.loads((full / "summary.json").read_text())
    s_cut = json.loads((cut / "summary.json").read_text())
    for k in ("steps", "tokens", "flops", "status"):
        assert s_cut[k] == s_full[k]
    for k in ("final_train_loss", "final_eval_loss"):
        assert s_cut[k] == (s_full[k] if jax.default_backend() == "cpu" else pytest.approx(s_full[k], rel=1e-2))
