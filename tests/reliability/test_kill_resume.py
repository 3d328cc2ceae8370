"""kill -9 at named points (TESTBED_FAULT, testbed/faults.py) and at random times; every resume reproduces the
uninterrupted run bitwise (CPU), leaves no torn line in metrics.jsonl and never a summary for an unfinished run.

Each scenario is a chain: one run directory is killed at several points in turn, each process resuming what the
previous one left, then a last process finishes it. tests/test_preempt.py covers the graceful path (SIGTERM ->
checkpoint -> exit 75); these are the kills without warning.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import jax
import pytest
from testbed.analysis import load as LD

from testbed.runstore import RunDir

from ..conftest import ROOT
from .common import (
    CKPT_EVERY,
    STEPS,
    SUMMARY_KEYS,
    assert_unfinished_and_consistent,
    checkpoints,
    curve,
    fault_env,
    rows,
    stale_temps,
    summary,
    train,
    train_cmd,
)

# (fault, what is on disk when it fires). Chain A: compile, mid-step before any checkpoint, a torn metrics write,
# mid-checkpoint, mid-eval, mid-rewrite of metrics.jsonl at resume.
CHAIN_A = [
    ("kill:compile", "config.yaml only: killed while compiling the first time"),
    ("kill:step@3", "rows 1..2 at most, no checkpoint: the resume starts from step 0"),
    ("torn:append:metrics.jsonl@14", "half a metrics line written, then killed (a torn write)"),
    (f"kill:checkpoint@{2 * CKPT_EVERY}", "the step-20 checkpoint save in flight (an orbax tmp directory)"),
    (f"kill:eval@{2 * CKPT_EVERY}", "the step-20 eval dispatched, not read"),
    ("kill:write:metrics.jsonl", "resume's rewrite of metrics.jsonl written to a temp file, not renamed"),
]
# Chain B: mid-step after checkpoints, before restore, before a metrics append, the last checkpoint in flight,
# after everything but the summary, and the summary's temp file written but not renamed.
CHAIN_B = [
    ("kill:step@27", "mid-step after the step-20 checkpoint"),
    ("kill:restore", "killed before reading the latest checkpoint"),
    ("kill:append:metrics.jsonl@3", "killed just before a metrics append"),
    (f"kill:checkpoint@{STEPS}", "the final checkpoint save in flight, every row on disk"),
    ("kill:finalize", "every step and checkpoint done, summary.json not written"),
    ("kill:write:summary.json", "summary.json's temp file written, not renamed"),
]


NO_RESUME_LOG = ("kill:restore", "kill:write:metrics.jsonl")  # they fire before "resuming ... from step s"


def _resumes_from(run) -> int:
    ck = checkpoints(run)
    return ck[-1] if ck else 0


def _assert_same_as_reference(run, reference, stderr):
    assert curve(run) == curve(reference), "the resumed curve differs from the uninterrupted run"
    got, want = summary(run), summary(reference)
    assert {k: got.get(k) for k in SUMMARY_KEYS} == {k: want.get(k) for k in SUMMARY_KEYS}, stderr[-2000:]
    assert not stale_temps(run), stale_temps(run)
    rows(run)  # every line whole


def _chain(chain, run, reference, env):
    log = []
    for fault, where in chain:
        start = _resumes_from(run)
        r = train(run, env, fault)
        assert r.returncode == -signal.SIGKILL, (fault, "the fault point was not reached", r.stderr[-3000:])
        rs = assert_unfinished_and_consistent(run, allow_torn_tail=fault.startswith("torn:"))
        if fault.startswith("torn:"):  # a partial last line: the readers stop before it (the resume cuts it)
            assert not (run / "metrics.jsonl").read_text().endswith("\n")
            assert RunDir(run).read_metrics() == rs and LD._metrics(run) == rs
        if start and fault not in NO_RESUME_LOG:
            assert f"resuming {run} from step {start}" in r.stderr, (fault, r.stderr[-2000:])
        log.append((fault, where, start, len(rs), checkpoints(run)))
    start = _resumes_from(run)
    r = train(run, env)
    assert r.returncode == 0, r.stderr[-4000:]
    if start:
        assert f"resuming {run} from step {start}" in r.stderr, r.stderr[-2000:]
    _assert_same_as_reference(run, reference, r.stderr)
    return log


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="bitwise resume is a CPU claim")
@pytest.mark.parametrize("chain", [CHAIN_A, CHAIN_B], ids=["compile-step-torn-ckpt-eval-rewrite",
                                                           "step-restore-append-lastckpt-finalize-summary"])
def test_kill_chain_resumes_to_the_uninterrupted_run(chain, reference, jax_env, tmp_path):
    log = _chain(chain, tmp_path / "run", reference, jax_env)
    # the chain really went through the states it names
    by_fault = {f: (start, n_rows, ck) for f, _, start, n_rows, ck in log}
    if chain is CHAIN_A:
        assert by_fault["kill:compile"][1] == 0 and by_fault["kill:step@3"][2] == []
    else:
        assert by_fault["kill:finalize"][1] == STEPS and by_fault["kill:finalize"][2][-1] == STEPS
        assert by_fault[f"kill:checkpoint@{STEPS}"][1] == STEPS


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="bitwise resume is a CPU claim")
def test_kills_at_random_times(reference, jax_env, tmp_path):
    """SIGKILL at seeded random times once the trainer has touched metrics.jsonl (the resume's rewrite, or the first
    rows): wherever it lands (compile, a step, an eval, a checkpoint, a write), the invariants hold."""
    run = tmp_path / "run"
    rng = random.Random(8)
    landed = []
    for _ in range(3):
        t0 = time.time()
        proc = subprocess.Popen(train_cmd(run), env=fault_env(jax_env, None), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        m = run / "metrics.jsonl"
        while proc.poll() is None and not (m.exists() and m.stat().st_mtime >= t0):
            time.sleep(0.002)
        delay = rng.uniform(0.0, 1.2)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run / "summary.json").exists():
            break  # finished before the kill landed
        rs = assert_unfinished_and_consistent(run)
        landed.append((round(delay, 2), len(rs), checkpoints(run)))
    assert landed, "no kill landed before the run finished"
    r = train(run, jax_env)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_as_reference(run, reference, r.stderr)
    print("random kills (delay s, rows on disk, checkpoints):", landed)
