"""`testbed report` and `testbed plot` on a small synthetic sweep; the page checked in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from .conftest import SHARED_DATA
from .test_load import write_run

TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
BUDGETS = (3e16, 1e17, 3e17)


def law(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def law_run(sweep, run_id, overrides, n, d, loss_of, rng, eval_every=1):
    """A completed run as testbed writes it: 20 steps to D tokens under a linear LR decay, each logged loss
    loss_of(N, tokens) with 0.2% noise (eval every `eval_every` steps), the summary ending at the last eval."""
    run = write_run(sweep, run_id, overrides, None)
    rows = []
    for k in range(1, 21):
        t = d * k / 20
        loss = loss_of(n, t) * np.exp(0.002 * rng.standard_normal())
        rows.append({"step": k, "tokens": t, "flops": 6 * n * t, "lr": 1e-3 * (1 - k / 21),
                     "train_loss": loss, **({"eval_loss": loss} if k % eval_every == 0 else {})})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = rows[-1]["eval_loss"]
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "steps": 20, "tokens": d, "flops": 6 * n * d, "final_train_loss": final,
        "final_eval_loss": final, "params_total": n, "params_embedding": 0.1 * n,
        "params_nonembedding": 0.9 * n, "flops_per_token": 6 * n}))


def synthetic_sweep(root, seed=0):
    """An IsoFLOP sweep as testbed writes it: 3 budgets x 5 sizes, curves logged every 1/20 of training following
    L(N, tokens) with 0.2% noise, plus one diverged run. N around the compute-optimal size of each budget."""
    rng = np.random.default_rng(seed)
    sweep = root / "sweep"
    i = 0
    for c in BUDGETS:
        n_opt = 0.092 * (c / 6) ** 0.521  # the law's N_opt(C) = G (C/6)^a
        for n in n_opt * np.geomspace(1 / 4, 4, 5):
            n, d = float(n), c / (6 * n)
            law_run(sweep, f"r{i:02d}", [f"seed={i}", f"model.d_model={32 * (1 + i % 3)}"], n, d, law, rng,
                    eval_every=5)
            i += 1
    bad = write_run(sweep, "zz_div", ["seed=99", "optim.lr=10.0"], None)
    (bad / "summary.json").write_text(json.dumps({"status": "diverged", "final_eval_loss": "nan", "params_total": 1e6,
                                                  "tokens": 1e9, "flops": 6e15, "steps": 3}))
    return sweep


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_writes_a_page_with_every_applicable_fit_figure_and_warning(tmp_path, cli):
    sweep = synthetic_sweep(tmp_path)
    out = tmp_path / "report"
    r = cli("report", str(sweep), "--out", str(out), "--bootstrap", "50", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"curves", "compute", "isoflop", "envelope", "contour", "holdout", "backtest"} <= set(res["drawn"]), res
    assert {"transfer", "critbatch", "landscape"} <= set(res["skipped"])  # no LR grid, no batch sweep: said why
    assert all(res["skipped"][k] for k in res["skipped"])
    assert any("1 diverged" in w for w in res["warnings"]), res["warnings"]
    page = (out / "index.html").read_text()
    for kind in res["drawn"]:
        png = out / "figures" / f"{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, kind
        assert f"figures/{kind}.png" in page
        svg = out / "figures" / f"{kind}.svg"
        if svg.exists():
            ET.parse(svg)  # well-formed
    # the Chinchilla fit's parameters and CIs are on the page, and they recover the law the sweep was drawn from
    report = json.loads((out / "report.json").read_text())
    fit = report["sections"]["compute"]["fit"]
    # 15 points at 0.2% noise: the bootstrap CI of alpha and beta is ~+-0.025 wide (seeds 0-2: estimates within
    # 0.011 of the truth), so each estimate is held to 0.03 and each 95% CI must hold the true value
    for k in ("alpha", "beta"):
        assert fit["params"][k] == pytest.approx(TRUE[k], abs=0.03), k
        assert fit["ci"][k][0] <= TRUE[k] <= fit["ci"][k][1], (k, fit["ci"][k])
    assert f"{fit['params']['alpha']:.4g}" in page and "95% CI" in page and "1 diverged" in page
    assert report["sections"]["holdout"]["fit"]["holdout"]["mean_abs_rel_error"] < 0.02
    # the backtest: 3 budgets, one cut (the largest budget's 5 runs predicted); Farseer needs 12 points to fit
    bt = report["sections"]["backtest"]["fit"]
    assert bt["laws"]["chinchilla"]["n_points"] == 5 and bt["laws"]["chinchilla"]["median_abs_rel_error"] < 0.02
    assert "12" in bt["skipped"]["farseer"]
    # the run table lists every run with its status, and the varying config axis
    assert page.count("<tr>") >= 16 + 1 and "diverged" in page and "model.d_model" in page
    # a second report into the same directory replaces it whole
    r2 = cli("report", str(sweep), "--out", str(out), "--kinds", "curves")
    assert r2.returncode == 0, r2.stderr
    assert not (out / "figures" / "compute.png").exists() and (out / "figures" / "curves.png").exists()
    assert not list(tmp_path.glob(".report.*"))
    # without --out the page goes to SWEEP_DIR/report, which the sweep's readers do not take for a run
    from testbed.analysis import load

    n_runs = len(load.load(sweep))
    r3 = cli("report", str(sweep), "--kinds", "curves")
    assert r3.returncode == 0, r3.stderr
    assert (sweep / "report" / "index.html").is_file() and len(load.load(sweep)) == n_runs


def ladder_sweep(root, seed=0):
    """A ladder as testbed writes it: 4 sizes x token multipliers M = D/N of 5, 20 and 80, curves under a linear decay,
    final losses from L = E + A/N^0.34 + B/D^0.34 (Gadre et al.'s law has equal exponents) with 0.2% noise."""
    def equal_exponents(n, d):
        return TRUE["E"] + TRUE["A"] / n ** 0.34 + TRUE["B"] / d ** 0.34

    rng = np.random.default_rng(seed)
    sweep = root / "ladder"
    for i, n in enumerate(np.geomspace(1e5, 1e7, 4)):
        for m in (5, 20, 80):
            law_run(sweep, f"n{i}m{m:02d}", [f"seed={i}", f"model.d_model={32 * (i + 1)}", "optim.warmup_steps=0"],
                    float(n), m * float(n), equal_exponents, rng)
    return sweep


def test_a_ladder_report_fits_the_over_training_law_and_one_size_curves(tmp_path, cli):
    """Runs on lines of constant D/N get Gadre et al.'s law; the annealing law is fitted on one model size (the
    largest of those with the most runs), not pooled over sizes whose L0 and A differ. An IsoFLOP grid (every run
    its own D/N) is told why it gets no over-training figure."""
    out = tmp_path / "report"
    r = cli("report", str(ladder_sweep(tmp_path)), "--out", str(out), "--bootstrap", "20", "--json",
            "--kinds", "overtrain,schedules")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    ot = report["sections"]["overtrain"]["fit"]
    assert ot["diagnostics"]["converged"] and ot["params"]["eta"] == pytest.approx(0.17, abs=0.02)  # 2 eta = 0.34
    assert ot["n_points"] == 12
    assert report["sections"]["schedules"]["fit"]["diagnostics"]["fit_runs"] == ["n3m05", "n3m20", "n3m80"]
    page = (out / "index.html").read_text()
    assert "token multipliers M = D/N: 5, 20, 80" in page and "fitted on the runs of N = 10,000,000" in page
    r2 = cli("report", str(synthetic_sweep(tmp_path)), "--out", str(tmp_path / "r2"), "--json",
             "--kinds", "overtrain")
    assert r2.returncode == 0, r2.stderr
    assert "2 or more token multipliers" in json.loads(r2.stdout)["skipped"]["overtrain"]


def test_report_bad_input_exits_2_and_writes_nothing(tmp_path, cli):
    out = tmp_path / "report"
    r = cli("report", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 2 and "SWEEP_DIR" in r.stderr and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("report", str(empty), "--out", str(out))
    assert r.returncode == 2 and not out.exists()
    r = cli("report", str(synthetic_sweep(tmp_path)), "--out", str(out), "--kinds", "nope")
    assert r.returncode == 2 and "--kinds" in r.stderr and not out.exists()
    r = cli("plot", "nope", str(empty))
    assert r.returncode == 2 and "choose one of" in r.stderr


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium); the page "
                                                "is still built and checked by the test above")
def test_report_renders_its_figures_in_headless_chromium(tmp_path, cli):
    """The page opened from disk (file://, no server) in headless Chromium: every figure decodes, and a
    screenshot is not blank."""
    sweep = synthetic_sweep(tmp_path)
    out = tmp_path / "report"
    r = cli("report", str(sweep), "--out", str(out), "--bootstrap", "20", "--kinds", "curves,isoflop,compute")
    assert r.returncode == 0, r.stderr
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    url = (out / "index.html").resolve().as_uri()
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(tmp_path)})
    m = re.search(r'data-figures="(\d+)" data-figures-rendered="(\d+)"', dom.stdout)
    assert m, dom.stdout[-2000:] + dom.stderr[-2000:]
    assert int(m.group(1)) == 3 and int(m.group(2)) == 3
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)}, cwd=tmp_path)
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[0] >= 2000 and img[..., :3].std() > 0.05  # figures and text, not a blank page


@pytest.mark.skipif(not (SHARED_DATA / "epoch_chinchilla").is_dir(), reason="../shared/data/epoch_chinchilla absent")
def test_plot_reproduces_chinchilla_figure_4_from_epochs_points(tmp_path, cli):
    csv = SHARED_DATA / "epoch_chinchilla" / "svg_extracted_data.csv"
    out = tmp_path / "fig4.svg"
    r = cli("plot", "contour", str(csv), "--columns", "N=Model Size,C=Training FLOP", "--out", str(out),
            "--bootstrap", "0", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["fit"]["params"]["alpha"] == pytest.approx(0.34, abs=0.02) and res["figure"] == str(out)
    ET.parse(out)


@pytest.mark.skipif(not (SHARED_DATA / "steplaw").is_dir(), reason="../shared/data/steplaw absent")
def test_plot_draws_the_step_law_landscape_from_its_released_runs(tmp_path, cli):
    """Batch in sequences of 2048 tokens (--columns seq_len=2048), the smoothed loss Step Law selects on."""
    out = tmp_path / "landscape.png"
    r = cli("plot", "landscape", str(SHARED_DATA / "steplaw" / "dense_lr_bs_loss.csv"), "--columns",
            "loss=smooth loss,seq_len=2048", "--out", str(out), "--bootstrap", "0", "--json")
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)["fit"]
    assert fit["diagnostics"]["cells"] == 17 and fit["params"]["gamma"] == pytest.approx(0.61, abs=0.03)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 50_000
