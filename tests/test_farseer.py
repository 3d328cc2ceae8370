"""Farseer's L(N, D): recovery of a known law, its extrapolation next to Chinchilla's, the CLI, Epoch's points."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from testbed.analysis import farseer as FS
from testbed.analysis import fit as F
from testbed.analysis import laws, report

from testbed.config import ConfigError

from .test_fit import EPOCH_CSV

# raw parameters (N in units of FS.N_UNIT): the data exponent falls from ~0.43 at N=1e7 to ~0.36 at N=3e9,
# the coefficient of the data term shrinks with N, and the N term tends to E = 1.8
TRUE_RAW = {"a1": 0.05, "b1": float(np.log(0.35)), "alpha": -0.3, "a2": 0.3, "b2": float(np.log(2000.0)),
            "beta": -0.2, "a3": 0.16, "b3": float(np.log(1.8)), "gamma": -0.34}


def farseer_points(noise=1e-3, seed=0):
    N, D = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(1e9, 3e11, 8))
    X = np.stack([N.ravel(), D.ravel()], 1)
    y = F.predict(FS.LAW, TRUE_RAW, X) * np.exp(noise * np.random.default_rng(seed).standard_normal(len(X)))
    return X, y


def test_natural_parameters_are_the_formula_for_n_in_parameters():
    """The reported parameters plugged into the printed formula (N in parameters) give the law's prediction."""
    X, _ = farseer_points()
    q = FS.LAW.natural(TRUE_RAW)
    N, D = X[:, 0], X[:, 1]
    by_formula = (np.exp(q["a3"] * N ** q["gamma"] + q["b3"])
                  + np.exp(q["a2"] * N ** q["beta"] + q["b2"]) * D ** -np.exp(q["a1"] * N ** q["alpha"] + q["b1"]))
    np.testing.assert_allclose(by_formula, F.predict(FS.LAW, TRUE_RAW, X), rtol=1e-10)
    assert FS.data_exponent(q, 1e7) == pytest.approx(0.427, abs=0.001)


def test_farseer_recovers_a_known_law_and_extrapolates_where_chinchilla_cannot():
    X, y = farseer_points()
    r = FS.fit_farseer(X, y)
    d = r.diagnostics
    assert d["converged"] and d["starts"] == 432 and d["starts_failed"] == 0, d
    q_true = FS.LAW.natural(TRUE_RAW)
    for n in (1e7, 1e8, 1e9):  # the N-dependent data exponent, the law's point
        assert FS.data_exponent(r.params, n) == pytest.approx(FS.data_exponent(q_true, n), rel=0.05), n
    assert r.params["gamma"] == pytest.approx(TRUE_RAW["gamma"], abs=0.02)
    assert np.exp(r.params["b3"]) == pytest.approx(1.8, rel=0.01)  # E, the large-N limit
    # fit below N = 1e9, predict above: a constant data exponent (Chinchilla) misses by an order of magnitude more
    m = X[:, 0] > 1e9
    err = {}
    for name, fitter in (("farseer", FS.fit_farseer), ("chinchilla", lambda a, b: F.fit(laws.CHINCHILLA, a, b))):
        res = fitter(X[~m], y[~m])
        assert res.diagnostics["converged"], name
        err[name] = float(np.mean(np.abs(res.predict(X[m]) / y[m] - 1)))
    assert err["farseer"] < 0.004 and err["chinchilla"] > 5 * err["farseer"], err


def test_farseer_refuses_too_few_points():
    X, y = farseer_points()
    with pytest.raises(ConfigError, match="needs at least 12"):
        FS.fit_farseer(X[:8], y[:8])


def test_cli_fit_farseer_reports_chinchilla_on_the_same_held_out_points(tmp_path, cli):
    X, y = farseer_points()
    path = tmp_path / "points.csv"
    pd.DataFrame({"params": X[:, 0], "tokens": X[:, 1], "loss": y}).to_csv(path, index=False)
    r = cli("fit", "farseer", str(path), "--columns", "N=params,D=tokens", "--holdout", "N > 1e9", "--json",
            "--bootstrap", "40", "--predict", "N=3e9,D=3e11", "--plot", str(tmp_path / "f.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["law"] == "farseer" and set(out["params"]) == set(FS.RAW) and set(out["ci"]) >= set(FS.RAW)
    h = out["holdout"]
    assert h["n_points"] == 16 and h["baseline"]["law"] == "chinchilla" and h["baseline"]["n_points"] == 16
    assert h["mean_abs_rel_error"] < 0.004 < h["baseline"]["mean_abs_rel_error"]
    (pred,) = out["predict"]
    truth = float(F.predict(FS.LAW, TRUE_RAW, np.array([[3e9, 3e11]]))[0])
    assert pred["loss"] == pytest.approx(truth, rel=0.01) and pred["ci"][0] < pred["loss"] < pred["ci"][1]
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert "chinchilla on the same points" in report.format_text(out)  # the text form of the same result


@pytest.mark.skipif(not EPOCH_CSV.is_file(), reason=f"{EPOCH_CSV} not present (Epoch AI's Chinchilla extraction)")
def test_epoch_points_farseer_extrapolates_better_than_chinchilla_to_the_largest_budgets():
    """Epoch's 240 points, fit on C <= 1e21, predict the 23 above. The claim (README): Farseer extrapolates with
    less than half Chinchilla's error, mean and worst (measured 0.47% vs 1.05%, worst 1.2% vs 2.8%); no published
    value exists for this split, so the test holds the comparison, not our own numbers."""
    df = pd.read_csv(EPOCH_CSV).sort_values("loss").iloc[:-5]
    N, C = df["Model Size"].to_numpy(float), df["Training FLOP"].to_numpy(float)
    X, y = np.stack([N, C / (6 * N)], 1), df["loss"].to_numpy(float)
    m = C > 1e21
    far, chin = FS.fit_farseer(X[~m], y[~m]), F.fit(laws.CHINCHILLA, X[~m], y[~m])
    assert far.diagnostics["converged"] and chin.diagnostics["converged"]
    e_far, e_chin = np.abs(far.predict(X[m]) / y[m] - 1), np.abs(chin.predict(X[m]) / y[m] - 1)
    assert m.sum() == 23
    assert e_far.mean() < 0.5 * e_chin.mean() and e_far.max() < 0.5 * e_chin.max()
    assert e_far.mean() < 0.006 and e_far.max() < 0.015  # README: 0.47% mean, 1.2% worst
