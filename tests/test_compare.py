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


def test_one_table_by_recipe_recovers_a_known_compute_multiplier(tmp_path, cli):
    """Two Chinchilla laws that differ only in A (A_B = A_A / k) have a constant compute multiplier k^(1/alpha):
    L*(C) = E + G C^-gamma with G ~ A^(beta/(alpha+beta)). One CSV with a recipe column; the fit recovers it."""
    k = 1.5
    faster = {**RECIPE_A, "A": RECIPE_A["A"] / k}
    truth = k ** (1 / RECIPE_A["alpha"])  # 3.29
    C = compare.c_grid(1e17)
    exact = compare.multiplier(laws.chinchilla_optimum(RECIPE_A, C)["loss"],
                               laws.chinchilla_optimum(faster, C)["loss"], C)[0]
    assert np.nanmax(np.abs(exact / truth - 1)) < 1e-3  # the inversion itself is exact and constant in C
    frames = []
    for name, q, seed in (("adamw", RECIPE_A, 0), ("fast", faster, 1)):
        write_points(tmp_path / f"{name}.csv", q, seed)
        frames.append(pd.read_csv(tmp_path / f"{name}.csv").assign(recipe=name))
    table = tmp_path / "recipes.csv"
    pd.concat(frames).to_csv(table, index=False)
    out, _ = compare.compare_by(table, bootstrap=60, table_out=tmp_path / "runs.csv")
    again, _ = compare.compare_by(tmp_path / "runs.csv", bootstrap=60)  # the exported table: the same analysis
    assert again["pairs"][0]["compute_multiplier"] == out["pairs"][0]["compute_multiplier"]
    assert out["by"] == "recipe" and list(out["recipes"]) == ["adamw", "fast"] and len(out["pairs"]) == 1
    rows = [r for r in out["pairs"][0]["compute_multiplier"] if not r["extrapolated"]]
    assert len(rows) == 5
    for r in rows:
        assert r["multiplier"] == pytest.approx(truth, rel=0.15)
        assert r["ci"][0] <= truth <= r["ci"][1]
    assert out["pairs"][0]["crossover"]["C"] is None  # B leads everywhere: no sign change
    r = cli("compare", str(table), "--bootstrap", "30", "--plot", str(tmp_path / "m.png"), "--table",
            str(tmp_path / "cli.csv"))
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "cli.csv")["recipe"].tolist() == pd.read_csv(table)["recipe"].tolist()
    assert "compute multiplier" in r.stdout and "fast" in r.stdout
    assert (tmp_path / "m.png").stat().st_size > 10_000
    r = cli("compare", str(table), "--by", "nope")
    assert r.returncode == 2 and "--by" in r.stderr
    flipped, _ = compare.compare_by(table, bootstrap=30, baseline="fast")  # A and B swap: the multiplier inverts
    assert list(flipped["recipes"]) == ["fast", "adamw"]
    assert flipped["pairs"][0]["compute_multiplier"][2]["multiplier"] == pytest.approx(1 / truth, rel=0.15)
    r = cli("compare", str(table), "--baseline", "sgd")
    assert r.returncode == 2 and "--baseline" in r.stderr
