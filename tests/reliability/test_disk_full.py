"""A full disk during a write: one clear line (exit 2, no Python traceback from testbed), a run directory that
does not look complete and holds no torn or temporary file, and a resume (with space) that finishes the run
exactly. Injected with TESTBED_FAULT=enospc:POINT everywhere, and for real on a small tmpfs where mounting works."""

from __future__ import annotations

import math
import subprocess

import jax
import pytest

from .common import (
    STEPS,
    SUMMARY_KEYS,
    assert_unfinished_and_consistent,
    curve,
    fault_env,
    rows,
    snapshot,
    stale_temps,
    summary,
    train,
)


def _assert_clear_storage_error(r, run):
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"testbed train: error: --out {run}: No space left on device"), last
    assert "free disk space" in last and "run the same command again" in last
    # exit 2 and this line last: no uncaught exception (orbax may log its own writers' errors before it)


def test_injected_enospc_at_every_write(reference, jax_env, tmp_path):
    run = tmp_path / "run"
    # config.yaml: the first write of a new run; nothing is left behind, not even the directory
    r = train(run, jax_env, "enospc:write:config.yaml")
    _assert_clear_storage_error(r, run)
    assert "Traceback" not in r.stderr
    assert not run.exists()

    # a metrics append mid-run: the failed write is cut back off, every line stays whole
    r = train(run, jax_env, "enospc:append:metrics.jsonl@15")
    _assert_clear_storage_error(r, run)
    assert "Traceback" not in r.stderr
    rs = assert_unfinished_and_consistent(run)
    assert 0 < len(rs) < STEPS and not stale_temps(run)

    # the rewrite of metrics.jsonl at resume: the old log is untouched, no temp file left
    before = snapshot(run)
    r = train(run, jax_env, "enospc:write:metrics.jsonl")
    _assert_clear_storage_error(r, run)
    after = snapshot(run)
    assert after["metrics.jsonl"] == before["metrics.jsonl"] and not stale_temps(run)

    # summary.json, the last write: the run is not counted finished
    r = train(run, jax_env, "enospc:write:summary.json")
    _assert_clear_storage_error(r, run)
    assert_unfinished_and_consistent(run)
    assert not stale_temps(run) and len(rows(run)) == STEPS

    r = train(run, jax_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert curve(run) == curve(reference) or jax.default_backend() != "cpu"
    assert {k: summary(run)[k] for k in SUMMARY_KEYS} == {k: summary(reference)[k] for k in SUMMARY_KEYS}


def _mount_tmpfs(path, kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="bitwise resume is a CPU claim")
def test_a_real_full_disk_on_a_small_tmpfs(reference, jax_env, tmp_path):
    """Room for the config, the log and two checkpoints: orbax's third save fails with ENOSPC in its background
    thread, the trainer stops with the one-line error, and after the filesystem grows the resume is exact."""
    ckpt_kb = sum(math.ceil(p.stat().st_size / 4096) * 4 for p in (reference / "checkpoints" / "10").rglob("*")
                  if p.is_file())
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, int(2.5 * ckpt_kb) + 64):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the injected ENOSPC test covers it")
    try:
        run = mnt / "run"
        r = train(run, jax_env)
        _assert_clear_storage_error(r, run)
        assert_unfinished_and_consistent(run)
        assert not stale_temps(run)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        r = train(run, jax_env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resuming" in r.stderr
        assert curve(run) == curve(reference)
        assert {k: summary(run)[k] for k in SUMMARY_KEYS} == {k: summary(reference)[k] for k in SUMMARY_KEYS}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_in_a_pack_is_the_same_one_line_error(reference, jax_env, tmp_path):
    """train-pack runs the same loop as train: ENOSPC on a member's metrics append stops the pack with one line
    (exit 2), no member is counted finished, and the same command then finishes both members."""
    import sys

    import yaml

    from testbed import config

    from ..conftest import ROOT

    dirs = [tmp_path / "a", tmp_path / "b"]
    raw = yaml.safe_load((reference / "config.yaml").read_text())
    for seed, d in enumerate(dirs):
        d.mkdir()
        (d / "config.yaml").write_text(config.dump_yaml(config.from_dict({**raw, "seed": seed})))
    cmd = [sys.executable, "-m", "testbed.launch.cli", "train-pack", *map(str, dirs), "--no-progress"]
    run = lambda fault=None: subprocess.run(cmd, env=fault_env(jax_env, fault), cwd=ROOT, capture_output=True,
                                            text=True, timeout=300)
    r = run("enospc:append:metrics.jsonl@25")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("testbed train-pack: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(dirs[0]) in errors[0], errors
    for d in dirs:
        assert 0 < len(assert_unfinished_and_consistent(d)) < STEPS and not stale_temps(d)
    r = run()
    assert r.returncode == 0 and "resuming pack of 2" in r.stderr, r.stderr[-3000:]
    for d in dirs:
        assert summary(d)["status"] == "completed" and [x["step"] for x in rows(d)] == list(range(1, STEPS + 1))
    assert summary(dirs[0])["final_eval_loss"] == pytest.approx(summary(reference)["final_eval_loss"], rel=1e-4)
