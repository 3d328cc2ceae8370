"""analysis/backtest.py and analysis/autofit.py: cuts by compute budget, out-of-sample errors, the law choice and
prediction intervals sized by those errors; `testbed backtest` and `testbed fit auto` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from testbed.analysis import autofit, backtest, intervals, load, report
from testbed.launch.cli import main

from testbed.config import ConfigError

TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}


def chinchilla(N, D, q=TRUE):
    return q["E"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]


def isoflop_table(budgets=(1e17, 3e17, 1e18, 3e18, 1e19, 3e19), noise=0.003, seed=0, jitter=0.05) -> pd.DataFrame:
    """7 sizes per budget around the compute-optimal N, compute jittered by a few % as real sweeps are."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.geomspace(0.25, 4, 7):
            cc = c * (1 + jitter * rng.uniform(-1, 1))
            d = cc / (6 * n)
            rows.append({"N": n, "N_nonembed": 0.8 * n, "D": d, "C": cc,
                         "loss": chinchilla(n, d) * math.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_budgets_group_jittered_isoflop_runs_and_coarsen_continuous_compute():
    df = isoflop_table()
    g = backtest.budget_groups(df["C"].to_numpy())
    assert g.max() + 1 == 6 and all(len(set(g[i * 7:(i + 1) * 7])) == 1 for i in range(6))
    spread = np.geomspace(1e17, 1e21, 200)  # one run per compute value: no grid at all
    gs = backtest.budget_groups(spread)
    assert 4 <= gs.max() + 1 <= backtest.MAX_BUDGETS
    assert np.all(np.diff(gs) >= 0)  # groups follow compute


def test_cuts_hold_out_the_largest_budgets_and_leave_enough_to_fit():
    df = isoflop_table()
    cuts = backtest.make_cuts(df["C"].to_numpy(), max_cuts=10, min_budgets=2)
    assert [c.k for c in cuts] == [1, 2, 3, 4]  # 6 budgets, 2 kept to fit
    for cut in cuts:
        held_c = df["C"][cut.held]
        assert held_c.min() > df["C"][~cut.held].max() and cut.c_max_fit == df["C"][~cut.held].max()
        assert cut.held.sum() == 7 * cut.k


def test_interval_scales_with_the_extrapolation_and_holds_the_ci():
    # backtest errors: the law over-predicts, more at 30x than at 3x (log errors scale with intervals.scale)
    pts = [{"loss": 1.0, "pred": 1.0 * math.exp(0.01 * s * float(intervals.scale(f))), "factor": f, "cut": 1}
           for f in (3.0, 30.0) for s in np.linspace(0.5, 1.5, 10)]
    near = intervals.interval(pts, 2.0, 3.0)
    far = intervals.interval(pts, 2.0, 100.0)
    assert near["pi"][0] < near["pi"][1] == 2.0  # only over-prediction seen: the interval lies below, holds pred
    assert (2.0 - far["pi"][0]) > 2.5 * (2.0 - near["pi"][0])  # scale(100) / scale(3) = 2.1 / 0.58: wider
    z = [math.log(p["loss"] / p["pred"]) / (intervals.SCALE_FLOOR + math.log10(p["factor"])) for p in pts]
    q = intervals.conformal(np.array(z), 0.05)  # ceil(21 * 0.05) = 2nd smallest of 20
    assert q == sorted(z)[1] == pytest.approx(-0.015)
    assert near["pi"][0] == pytest.approx(2.0 * math.exp(q * (intervals.SCALE_FLOOR + math.log10(3.0))))
    wide_ci = intervals.interval(pts, 2.0, 3.0, ci=[1.5, 2.5])
    assert wide_ci["pi"] == [1.5, 2.5]


def test_choice_prefers_lower_error_and_breaks_ties_by_fewer_parameters():
    def rec(err, params):
        return {"params": params, "points": [{"rel_error": err * s, "factor": f, "loss": 1.0, "pred": 1.0}
                                             for f in (2.0, 20.0) for s in (1, -1, 1)]}
    bt = {"laws": {"farseer": rec(0.010, 9), "chinchilla": rec(0.020, 5)}}
    assert backtest.choose(bt, 3.0)["chosen"] == "farseer"
    bt["laws"]["chinchilla"] = rec(0.0102, 5)  # within 5%: a tie, the smaller law
    assert backtest.choose(bt, 3.0)["chosen"] == "chinchilla"


def test_backtest_reports_errors_bias_coverage_and_skips_laws_without_their_columns():
    df = isoflop_table().drop(columns="N_nonembed")
    rows = load.usable(df.assign(ok=True))[0]
    out = backtest.backtest(rows, ("chinchilla-vp", "kaplan"), bootstrap=30)
    assert "kaplan" in out["skipped"] and "N_nonembed" in out["skipped"]["kaplan"]
    r = out["laws"]["chinchilla-vp"]
    assert r["n_points"] == 7 * (1 + 2 + 3 + 4)
    assert 1.5 < r["factor_range"][0] and r["factor_range"][1] > 80  # 3x budgets apart, up to 4 held out
    # the true form with 0.3% noise: out-of-sample errors stay at the noise level even at 100x
    assert r["median_abs_rel_error"] < 0.006 and r["worst_abs_rel_error"] < 0.03, r
    assert abs(r["bias"]) < 0.005 and 0.0 <= r["ci_coverage"] <= 1.0
    assert r["pi_coverage_loco"] >= 0.8  # each cut's intervals from the other cuts' errors


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`testbed ARGS` in this process (the fits' compiled programs are shared across tests)."""
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fit_auto_picks_the_true_form_and_its_interval_covers_a_far_run(tmp_path, capsys):
    df = isoflop_table(noise=0.002, seed=1)
    path = tmp_path / "sweep.csv"
    df.to_csv(path, index=False)
    n, d = 3e9, 2e11  # C = 3.6e21: ~100x the largest budget
    rc, stdout, err = run_cli(capsys, "fit", "auto", str(path), "--laws", "chinchilla-vp,kaplan", "--predict",
                              f"N={n},D={d},N_nonembed={0.8 * n}", "--bootstrap", "20", "--json")
    assert rc == 0, err
    out = json.loads(stdout)
    assert out["chosen"] == "chinchilla-vp", out["choice"]
    assert out["choice"]["scores"]["kaplan"] > 2 * out["choice"]["scores"]["chinchilla-vp"]
    pred = out["predict"][0]
    truth = chinchilla(n, d)
    assert abs(pred["loss"] / truth - 1) < 0.01
    assert pred["pi"][0] <= truth <= pred["pi"][1] and pred["pi"][0] <= pred["ci"][0] <= pred["ci"][1] <= pred["pi"][1]
    assert pred["factor"] == pytest.approx(6 * n * d / df["C"].max(), rel=0.1)
    assert set(out["backtest"]["laws"]) == {"chinchilla-vp", "kaplan"} and "pi_method" in out
    text = report.format_text(out)
    assert "auto: chose chinchilla-vp" in text and "90% PI [" in text, text


def test_backtest_cli_json_text_and_figure(tmp_path, capsys):
    path = tmp_path / "sweep.csv"
    isoflop_table().drop(columns="N_nonembed").to_csv(path, index=False)
    rc, stdout, err = run_cli(capsys, "backtest", str(path), "--laws", "chinchilla-vp,kaplan", "--cuts", "3",
                              "--bootstrap", "20", "--json", "--plot", str(tmp_path / "bt.png"))
    assert rc == 0, err
    out = json.loads(stdout)
    assert [c["k"] for c in out["cuts"]] == [1, 2, 3] and out["plot"].endswith("bt.png")
    assert (tmp_path / "bt.png").stat().st_size > 10_000
    assert all(k in out["laws"]["chinchilla-vp"] for k in ("median_abs_rel_error", "worst_abs_rel_error", "bias",
                                                            "ci_coverage", "by_factor", "points"))
    text = backtest.format_text(out)
    assert "chinchilla-vp" in text and "kaplan: skipped, the data has no N_nonembed" in text, text


def test_bad_backtest_input_is_refused_with_the_reason(tmp_path, capsys):
    path = tmp_path / "one_budget.csv"
    isoflop_table(budgets=(1e18, 3e18)).to_csv(path, index=False)
    rc, _, err = run_cli(capsys, "backtest", str(path))
    assert rc == 2 and "2 compute budget(s)" in err, err
    rc, _, err = run_cli(capsys, "backtest", str(path), "--laws", "isoflop")
    assert rc == 2 and "not a law fitted point by point" in err
    rc, _, err = run_cli(capsys, "fit", "chinchilla", str(path), "--laws", "kaplan")
    assert rc == 2 and "only for fit auto" in err
    with pytest.raises(ConfigError, match="fit auto chooses its law"):
        autofit.run(path, holdout="C > 1e18")


def test_scaled_column_mapping(tmp_path):
    path = tmp_path / "gflops.csv"
    pd.DataFrame({"params": [1e8, 2e8], "tokens": [1e9, 2e9], "gflops": [6e8, 2.4e9], "l": [3.0, 2.9]}).to_csv(
        path, index=False)
    df = load.load(path, columns=load.parse_columns("N=params,D=tokens,C=gflops*1e9,loss=l"))
    np.testing.assert_allclose(df["C"], [6e17, 2.4e18])
