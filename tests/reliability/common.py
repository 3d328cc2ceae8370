"""Shared pieces of the reliability suite: one small run configuration, the trainer as a subprocess (optionally
with a fault injected through TESTBED_FAULT, testbed/faults.py), and checks of a run directory's invariants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
STEPS, CKPT_EVERY, EVAL_EVERY = 40, 10, 20
SETS = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "data.seq_len=32", "train.batch_size=8",
        "data.eval_sequences=16", "optim.lr=1e-2", "optim.warmup_steps=5", "train.sigma_every=0",
        f"train.steps={STEPS}", f"train.eval_every={EVAL_EVERY}", f"train.checkpoint_every={CKPT_EVERY}",
        "train.keep_checkpoints=5"]
ARGS = [x for kv in SETS for x in ("--set", kv)] + ["--no-progress"]
# what "the same final metrics" compares: every logged value except wall-clock ones, bitwise (CPU)
CURVE_KEYS = ("step", "tokens", "flops", "lr", "train_loss", "grad_norm", "param_norm", "update_ratio", "eval_loss",
              "eval_loss_se")
SUMMARY_KEYS = ("status", "steps", "tokens", "flops", "final_train_loss", "final_eval_loss", "final_eval_loss_se")


def train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "testbed.launch.cli", "train", str(TINY), "--out", str(out), *ARGS, *extra]


def fault_env(env: dict, fault: str | None) -> dict:
    e = {k: v for k, v in env.items() if k != "TESTBED_FAULT"}
    if fault:
        e["TESTBED_FAULT"] = fault
    return e


def train(out: Path, env: dict, fault: str | None = None, *extra: str, timeout: float = 300
          ) -> subprocess.CompletedProcess:
    """`testbed train` on the suite's config into `out`, with TESTBED_FAULT=fault when given."""
    return subprocess.run(train_cmd(out, *extra), env=fault_env(env, fault), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def lines(run: Path) -> list[str]:
    p = run / "metrics.jsonl"
    return p.read_text().split("\n") if p.exists() else []


def rows(run: Path, allow_torn_tail: bool = False) -> list[dict]:
    """metrics.jsonl as rows, asserting every line is whole JSON ending in a newline (a torn last line is
    tolerated only when asked: a torn write that the process could not cut back, e.g. power lost mid-write)."""
    text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
    parts = text.split("\n")
    body, tail = parts[:-1], parts[-1]
    if tail:
        assert allow_torn_tail, f"metrics.jsonl ends in a partial line: {tail[:80]!r}"
        try:
            json.loads(tail)
            raise AssertionError("a complete row without its newline")
        except json.JSONDecodeError:
            pass
    out = [json.loads(line) for line in body]  # raises on any torn line before the end
    return out


def curve(run: Path) -> list[dict]:
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows(run)]


def checkpoints(run: Path) -> list[int]:
    """Finalized orbax steps (a step being written is a `<s>.orbax-checkpoint-tmp*` directory, not counted)."""
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_unfinished_and_consistent(run: Path, allow_torn_tail: bool = False) -> list[dict]:
    """After a kill: no summary (a killed run never looks finished); whole rows numbered 1..n with no gap or
    repeat; no finalized checkpoint ahead of the rows on disk (a checkpoint at s is saved after rows <= s)."""
    assert not (run / "summary.json").exists(), "a killed run has a summary.json"
    rs = rows(run, allow_torn_tail=allow_torn_tail)
    assert [r["step"] for r in rs] == list(range(1, len(rs) + 1)), [r["step"] for r in rs]
    ck = checkpoints(run)
    if ck:
        assert ck[-1] <= len(rs), (ck, len(rs))
    return rs


def stale_temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp.*"))


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its mtime and bytes: 'nothing written or overwritten' is equality of two."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[str((Path(dirpath) / d).relative_to(root)) + "/"] = (0, b"")
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out
