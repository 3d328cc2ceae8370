"""testbed compare: two recipes' fits, parameter differences with CIs, L*(C) across compute and the crossover."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from testbed.analysis import compare, laws

RECIPE_A = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
RECIPE_B = {"E": 1.6, "A": 1500.0, "B": 4000.0, "alpha": 0.34, "beta": 0.37}  # worse when small, better asymptote


def write_points(path, q, seed):
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 3e9, 6), np.geomspace(1e9, 3e11, 7)))
    L = q["E"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]
    L = L * np.exp(5e-4 * np.random.default_rng(seed).standard_normal(L.shape))
    pd.DataFrame({"N": N, "D": D, "loss": L}).to_csv(path, index=False)
    return path


def true_crossover() -> float:
    C = np.geomspace(1e15, 1e27, 20001)
    d = laws.chinchilla_optimum(RECIPE_B, C)["loss"] - laws.chinchilla_optimum(RECIPE_A, C)["loss"]
    return float(C[np.nonzero(np.diff(np.sign(d)))[0][0]])


def test_crossover_and_differences_with_cis(tmp_path, cli):
    a, b = write_points(tmp_path / "a.csv", RECIPE_A, 0), write_points(tmp_path / "b.csv", RECIPE_B, 1)
    out, curves = compare.compare(a, b, bootstrap=100)
    d = out["diff_b_minus_a"]["E"]
    assert d["value"] == pytest.approx(-0.2, abs=0.03) and d["ci"][0] < d["value"] < d["ci"][1] and d["ci"][1] < 0
    c = out["crossover"]
    truth = true_crossover()
    assert c["C"] == pytest.approx(truth, rel=0.5) and c["ci"][0] <= c["C"] <= c["ci"][1]
    assert c["fraction_of_resamples_crossing"] > 0.9
    assert c["extrapolated"] and out["data_compute_range"][1] < c["C"]  # the data stop at 5.4e21 FLOPs
    first, last = out["optimal_loss"][0], out["optimal_loss"][-1]
    assert first["b_minus_a"] > 0 > last["b_minus_a"]  # B loses at small compute, wins at large
    r = cli("compare", str(a), str(b), "--bootstrap", "40", "--json", "--plot", str(tmp_path / "cmp.png"))
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert set(j) >= {"a", "b", "diff_b_minus_a", "optimal_loss", "crossover"}
    assert (tmp_path / "cmp.png").stat().st_size > 10_000


def test_same_recipe_twice_differs_by_nothing_significant(tmp_path, cli):
    a, b = write_points(tmp_path / "a.csv", RECIPE_A, 0), write_points(tmp_path / "b.csv", RECIPE_A, 2)
    out, _ = compare.compare(a, b, bootstrap=100)
    for p, d in out["diff_b_minus_a"].items():
        assert d["ci"][0] <= 0 <= d["ci"][1], p
    assert all(row["ci"][0] <= 0 <= row["ci"][1] for row in out["optimal_loss"])
    r = cli("compare", str(a), str(b), "--law", "kaplan")
    assert r.returncode == 2 and "--law" in r.stderr
