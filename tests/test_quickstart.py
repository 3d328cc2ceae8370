"""`testbed quickstart --size tiny`: the whole main job (sweep -> fits -> held-out prediction -> report) on the
embedded data, then the resume path. The default size's wall time is a benchmark (bench/quickstart.py)."""

from __future__ import annotations

import json
import time

import pytest


def test_quickstart_tiny_end_to_end_then_resumes_in_seconds(tmp_path, cli):
    out = tmp_path / "qs"
    r = cli("quickstart", "--size", "tiny", "--out", str(out), "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["runs"] >= 12 and len(s["budgets"]) >= 3 and s["trained"] == s["runs"] and s["design"] == "wsd_branch"
    # one constant-LR run per width, one cooldown per (width, budget): the cooldowns are the fitted points
    assert s["runs"] == len(s["widths"]) * (1 + len(s["budgets"]))
    assert s["chinchilla"]["n_points"] == len(s["widths"]) * len(s["budgets"])
    assert s["chinchilla"]["excluded"]["wsd_parent"] == len(s["widths"]) and s["chinchilla"]["diagnostics"]["converged"]
    # final losses are eval losses on the stratified set: a standard error of a fraction of a percent
    assert 0 < s["eval_loss_se_rel"]["median"] <= s["eval_loss_se_rel"]["max"] < 0.01
    assert set(s["chinchilla"]["ci"]) >= {"E", "A", "B", "alpha", "beta"}
    h = s["holdout"]
    # the held-out run is larger than every fitted run and was predicted from the fit, then trained
    assert h["C"] > max(s["budgets"]) and h["observed_loss"] > 0 and abs(h["rel_error"]) < 0.05
    assert h["predicted_loss"] == min(c["predicted_loss"] for c in h["candidates"])
    assert h["N"] == pytest.approx(h["N_observed"]) and h["D"] == pytest.approx(h["D_observed"])
    # its 90% prediction interval (Chinchilla's backtest errors on the sweep) holds the bootstrap CI
    lo, hi = h["predicted_pi"]
    assert lo <= min(h["predicted_ci"][0], h["predicted_loss"]) <= max(h["predicted_ci"][1], h["predicted_loss"]) <= hi
    assert h["backtest_cuts"] >= 1
    assert h["inside_pi"] == (lo <= h["observed_loss"] <= hi) and h["extrapolation_factor"] > 1
    assert s["data_entropy"] > 0 and s["chinchilla"]["params"]["E"] > 0
    page = (out / "report" / "index.html").read_text()
    assert "Held-out run" in page and (out / "report" / "figures" / "isoflop.png").is_file()
    assert set(s["phases"]) == {"train_s", "fit_s", "holdout_train_s", "report_s", "total_s"}
    assert "Held-out run" in r.stderr or "held-out run" in r.stderr  # progress went to stderr
    # again: nothing to train, the stored summary in seconds
    t0 = time.perf_counter()
    again = cli("quickstart", "--size", "tiny", "--out", str(out))
    assert again.returncode == 0 and "complete" in again.stderr and "Held-out run" in again.stdout
    assert time.perf_counter() - t0 < 30


def test_quickstart_refuses_a_bad_size_or_another_quickstarts_directory(tmp_path, cli):
    r = cli("quickstart", "--size", "huge", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--size" in r.stderr and not (tmp_path / "a").exists()
    other = tmp_path / "b"
    other.mkdir()
    (other / "sweep.yaml").write_text("name: something else\n")
    r = cli("quickstart", "--size", "tiny", "--out", str(other))
    assert r.returncode == 2 and "different quickstart" in r.stderr
    assert (other / "sweep.yaml").read_text() == "name: something else\n"
