"""testbed.analysis.transfer on synthetic sweeps written from a known loss surface (no training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from testbed.analysis import runtable as R
from testbed.analysis import transfer as T
from testbed.analysis import transferprofile as TP
from testbed.launch.cli import main

from testbed.config import ConfigError

from .conftest import ROOT

WIDTHS = (32, 64, 128, 256)
GRID = tuple(-10.0 + 0.5 * i for i in range(17))  # log2 lr from -10 to -2, step 0.5
SEED_SHIFT = {0: -0.1, 1: 0.0, 2: 0.1}  # per-seed shift of the optimum: the seed mean's vertex is the truth
K = 0.08  # curvature of the loss in log2 lr
DIVERGE = 2.5  # runs this far above their optimum (in log2 lr) diverge


def floor(w: int) -> float:
    return 2.5 + (32 / w) ** 0.5


def sp_opt(w: int) -> float:
    return -5.0 - math.log2(w / 32)


def mup_opt(w: int) -> float:
    return -6.0


def write_run(root, cfg: dict, status: str | None, loss: float, **summary) -> None:
    """One run directory; status None leaves it unfinished (config.yaml only); `summary`: more summary.json keys."""
    d = root / f"run{len(list(root.iterdir())):04d}"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.dump(cfg, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    if status is not None:
        v = loss if math.isfinite(loss) else str(loss)
        (d / "summary.json").write_text(json.dumps({"status": status, "final_eval_loss": v,
                                                    "final_train_loss": v, **summary}))


def config(width: int, x: float, seed: int, name: str = "mup", wd: float = 0.0, depth: int = 2) -> dict:
    return {"model": {"d_model": width, "n_layers": depth, "n_heads": width // 16, "d_ff": 4 * width},
            "param": {"name": name, "base_width": 32}, "data": {"source": "synthetic", "seq_len": 64},
            "optim": {"lr": 2.0**x, "weight_decay": wd, "schedule": "cosine"}, "train": {"steps": 100},
            "seed": seed}


def make_sweep(root, panels: dict, widths=WIDTHS, seeds=(0, 1, 2), grid=GRID, noise=1e-3, wd=0.0) -> dict:
    """Writes (panel x width x lr x seed) runs with loss floor(w) + K (x - x*_w - shift_seed)^2 + noise.

    Returns the counts the analysis must report, from the noiseless surface.
    """
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    counts = {"diverged_or_nan": 0, "above_1.2x_min": 0, "runs": 0}
    for name, opt in panels.items():
        for w in widths:
            clean = {x: floor(w) + K * (x - opt(w)) ** 2 for x in grid if x - opt(w) <= DIVERGE}
            low = min(clean.values())
            for x in grid:
                for s in seeds:
                    counts["runs"] += 1
                    if x - opt(w) > DIVERGE:
                        write_run(root, config(w, x, s, name, wd), "diverged", math.nan)
                        counts["diverged_or_nan"] += 1
                        continue
                    assert abs(clean[x] - 1.2 * low) > 0.01, "borderline point: the test would be ill-posed"
                    counts["above_1.2x_min"] += clean[x] > 1.2 * low
                    loss = floor(w) + K * (x - opt(w) - SEED_SHIFT[s]) ** 2 + noise * rng.standard_normal()
                    write_run(root, config(w, x, s, name, wd), "completed", loss)
    return counts


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    counts = make_sweep(root, {"mup": mup_opt, "sp": sp_opt})
    write_run(root, config(64, -6.0, 0), None, 0.0)  # unfinished
    write_run(root, config(64, -6.0, 3), None, 0.0)
    write_run(root, config(64, -6.0, 4), "failed", 3.1)  # a finite loss, but the run failed
    counts["diverged_or_nan"] += 1
    table = T.load_runs(root)
    return root, counts, table, T.analyze_transfer(table)


def by_panel(result: dict, key: str = "param.name") -> dict:
    return {p["panel"][key]: p for p in result["panels"]}


def test_recovers_optima_and_verdicts(sweep):
    _, _, _, result = sweep
    assert result["panel_keys"] == ["param.name"]
    p = by_panel(result)
    mup, sp = p["mup"], p["sp"]
    assert mup["widths"] == sp["widths"] == list(WIDTHS)
    for panel, opt in ((mup, mup_opt), (sp, sp_opt)):
        assert not any(panel["edge"])
        for w, got in zip(panel["widths"], panel["log2_opt"], strict=True):
            assert abs(got - opt(w)) < 0.05, (w, got)
        for w, got in zip(panel["widths"], panel["loss_opt"], strict=True):
            assert abs(got - (floor(w) + K * 0.1**2 * 2 / 3)) < 2e-3  # the seed mean's floor
    assert mup["drift"] < 0.1 and abs(mup["slope"]) < 0.05
    assert abs(sp["slope"] + 1) < 0.05 and abs(sp["drift"] - 3) < 0.1
    assert mup["max_penalty"] < 0.002 and sp["max_penalty"] > 0.1  # sp: 3 steps of K off at 8x width
    assert mup["transfers"] is True and sp["transfers"] is False
    assert mup["base_width"] == 32 and mup["penalty"][0] == 0.0
    assert mup["wider_is_better"] is True and mup["monotone_fraction"] == 1.0
    assert sp["monotone_fraction"] < 0.8  # at large LR the wide SP models are worse
    assert result["thresholds"] == {"drift": 0.5, "slope": 0.1, "penalty": 0.005}
    json.dumps(result, allow_nan=False)


def test_penalty_at_the_transferred_optimum(sweep):
    """SP's base optimum (-5) is K * 2^2 above the optimum at 4x width and diverges at 8x (DIVERGE = 2.5)."""
    _, _, _, result = sweep
    sp = by_panel(result)["sp"]
    expected = K * (sp_opt(32) - sp_opt(128)) ** 2 / sp["loss_opt"][2]
    assert abs(sp["penalty"][2] - expected) < 0.005
    assert sp["penalty"][3] is None
    assert any(w.startswith("d_model=256: no loss at the base optimum") and "diverged" in w for w in sp["warnings"])
    assert sp["max_penalty"] == max(p for p in sp["penalty"] if p is not None)


def test_dropped_runs_are_counted(sweep):
    _, counts, table, result = sweep
    assert counts["diverged_or_nan"] > 10 and counts["above_1.2x_min"] > 10
    assert result["n_dropped"] == {"diverged_or_nan": counts["diverged_or_nan"],
                                   "above_1.2x_min": counts["above_1.2x_min"], "unfinished": 2,
                                   "nonpositive_hp": 0}
    assert result["n_runs"] == counts["runs"] + 3
    assert result["n_used"] == result["n_runs"] - sum(result["n_dropped"].values())
    assert len(table.unfinished) == 2 and len(table.rows) == counts["runs"] + 1
    assert sum(math.isnan(r["final_eval_loss"]) for r in table.rows) == counts["diverged_or_nan"] - 1


def test_bootstrap_ci_covers_truth_and_is_reproducible(sweep):
    _, _, table, result = sweep
    for panel, opt in ((by_panel(result)["mup"], mup_opt), (by_panel(result)["sp"], sp_opt)):
        for w, (lo, hi) in zip(panel["widths"], panel["log2_opt_ci"], strict=True):
            assert lo <= opt(w) <= hi
            assert 0.1 < hi - lo < 0.4  # the seeds' optima differ by +-0.1
    assert T.analyze_transfer(table, bootstrap=200) == T.analyze_transfer(table, bootstrap=200)
    assert T.analyze_transfer(table, bootstrap=0)["panels"][0]["log2_opt_ci"][0] is None


def test_single_seed_ci_is_the_point_with_a_warning(tmp_path):
    make_sweep(tmp_path / "s", {"mup": mup_opt}, seeds=(1,))
    p = T.analyze_transfer(T.load_runs(tmp_path / "s"))["panels"][0]
    for x, ci in zip(p["log2_opt"], p["log2_opt_ci"], strict=True):
        assert ci == [x, x]
    assert sum("one seed" in w for w in p["warnings"]) == len(WIDTHS)


def test_lr_wd_grid_gives_a_panel_per_weight_decay(tmp_path):
    root = tmp_path / "grid"
    make_sweep(root, {"mup": mup_opt}, seeds=(0, 2), wd=0.0)
    make_sweep(root, {"mup": lambda w: -6.5}, seeds=(0, 2), wd=0.1)
    table = T.load_runs(root)
    result = T.analyze_transfer(table, bootstrap=100)
    assert result["panel_keys"] == ["optim.weight_decay"]
    p = by_panel(result, "optim.weight_decay")
    assert sorted(p) == [0.0, 0.1]
    assert np.allclose(p[0.0]["log2_opt"], -6.0, atol=0.05) and np.allclose(p[0.1]["log2_opt"], -6.5, atol=0.05)
    wd = T.analyze_transfer(table, hp="optim.weight_decay", bootstrap=0)
    assert wd["n_dropped"]["nonpositive_hp"] > 0  # log2(0) has no place on the axis
    assert wd["panel_keys"] == ["optim.lr"]


def test_depth_axis(tmp_path):
    root = tmp_path / "depth"
    root.mkdir()
    for depth in (2, 4, 8, 16):
        for x in GRID:
            for s in (0, 1):
                loss = 3.0 - 0.05 * math.log2(depth) + K * (x + 7) ** 2 + SEED_SHIFT[s] * 1e-2
                write_run(root, config(64, x, s, depth=depth), "completed", loss)
    result = T.analyze_transfer(T.load_runs(root), axis="model.n_layers", bootstrap=100)
    assert result["panel_keys"] == [] and len(result["panels"]) == 1
    p = result["panels"][0]
    assert p["widths"] == [2, 4, 8, 16]
    assert np.allclose(p["log2_opt"], -7.0, atol=0.05)
    assert p["transfers"] is True and p["wider_is_better"] is True


def test_edge_and_concave_are_flagged(tmp_path):
    make_sweep(tmp_path / "e", {"mup": lambda w: -1.0}, seeds=(0,))  # optimum beyond the grid's top (-2)
    p = T.analyze_transfer(T.load_runs(tmp_path / "e"))["panels"][0]
    assert all(p["edge"]) and p["log2_opt"] == [-2.0] * len(WIDTHS)
    assert sum("highest grid value" in w for w in p["warnings"]) == len(WIDTHS)
    x = np.arange(-8.0, -3.9, 0.5)
    concave = np.full_like(x, 3.0)
    concave[2:7] = [2.895, 2.91, 2.89, 2.91, 2.895]  # the 5 points the parabola sees: concave, minimum inside
    fit = T.fit_optimum(x, concave)
    assert fit.edge and fit.log2_opt == -6.0 and "concave" in fit.reason
    good = T.fit_optimum(x, 3.0 + 0.1 * (x + 5.7) ** 2)
    assert not good.edge and abs(good.log2_opt + 5.7) < 1e-9 and abs(good.loss_opt - 3.0) < 1e-9


def test_keys_tied_to_the_axis_do_not_split_panels(sweep, tmp_path):
    _, _, _, result = sweep
    assert {"model.n_heads", "model.d_ff"} <= set(result["tied_keys"])
    root = tmp_path / "wd"  # muP scales WD with width, SP keeps it: WD moves inside the muP panel
    root.mkdir()
    for name in ("sp", "mup"):
        for w in WIDTHS:
            for x in GRID[4:12]:
                wd = 0.1 * (w / 32 if name == "mup" else 1)
                write_run(root, config(w, x, 0, name, wd), "completed", floor(w) + K * (x + 6) ** 2)
    result = T.analyze_transfer(T.load_runs(root), bootstrap=0)
    assert result["panel_keys"] == ["param.name"] and "optim.weight_decay" in result["tied_keys"]
    assert [len(p["widths"]) for p in result["panels"]] == [4, 4]


def test_plot_writes_a_png(sweep, tmp_path):
    _, _, table, result = sweep
    out = T.plot_transfer(result, table, tmp_path / "fig" / "transfer.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_errors_name_the_problem(tmp_path, sweep):
    root, _, table, _ = sweep
    with pytest.raises(ConfigError, match="does not exist"):
        T.load_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run directories"):
        T.load_runs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="pass its parent"):
        T.load_runs(next(p for p in root.iterdir()))
    with pytest.raises(ConfigError, match=r"optim\.lrr: no run's config has this key.*optim\.lr"):
        T.analyze_transfer(table, hp="optim.lrr")
    with pytest.raises(ConfigError, match="single value"):
        T.analyze_transfer(table, hp="model.n_layers")
    with pytest.raises(ConfigError, match="metric eval_bpb"):
        T.load_runs(root, metric="eval_bpb")


def test_analysis_does_not_import_jax():
    code = ("import sys, testbed.analysis.transfer; "
            "bad = [m for m in ('jax', 'flax', 'optax', 'testbed.train', 'testbed.model') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_cli_json_and_missing_dir(cli, sweep, tmp_path):
    root, _, _, result = sweep
    r = cli("transfer", str(root), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == result
    r = cli("transfer", str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stdout == ""


def test_cli_text_plot_and_bad_key(sweep, tmp_path, capsys):
    root, _, _, _ = sweep
    svg = tmp_path / "t.svg"
    assert main(["transfer", str(root), "--bootstrap", "50", "--metric", "final_train_loss", "--plot", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "param.name=mup" in out and "verdict: TRANSFERS" in out and "verdict: does not transfer" in out
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert main(["transfer", str(root), "--axis", "model.width"]) == 2
    assert "--axis model.width: no run's config has this key" in capsys.readouterr().err


def test_parabola_sees_only_the_lowest_points_of_an_asymmetric_curve():
    """Loss vs log2 LR rises slowly below the optimum and steeply above it; a parabola through the whole 1.2x band
    would sit below the data. With the window around the minimum the vertex stays near the observed optimum."""
    x = np.arange(-12.0, -3.9, 1.0)
    y = np.where(x < -6, 4.0 + 0.03 * (x + 6) ** 2, 4.0 + 0.4 * (x + 6) ** 2)
    fit = T.fit_optimum(x, y)
    assert fit.fit_range == (-8.0, -5.0)  # two grid points below the minimum at -6; -4 is above 1.2x the minimum
    assert abs(fit.log2_opt + 6) < 1.0 and fit.loss_opt > 4.0 - 0.04


def test_csv_table_round_trips_to_the_same_analysis(sweep, tmp_path):
    """The run table a doc commits (one row per run) gives the sweep directory's analysis and figure inputs."""
    root, _, table, result = sweep
    csv_path = tmp_path / "data" / "runs.csv"
    R.write_csv(table, csv_path, keep=("optim.lr", "model.d_model"))
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[-3:] == ["final_eval_loss", "status", "run_dir"] and "seed" in header and "optim.lr" in header
    assert "data.seq_len" not in header  # constant across the sweep: not a column
    assert len(csv_path.read_text().splitlines()) == 1 + len(table.rows) + len(table.unfinished)
    back = R.load(csv_path)
    assert back.unfinished == sorted(table.unfinished)
    assert T.analyze_transfer(back) == result
    assert T.analyze_transfer(back, hp="optim.lr", bootstrap=0, seed=3) == T.analyze_transfer(table, bootstrap=0,
                                                                                                seed=3)


def test_cli_writes_and_reads_the_table(cli, sweep, tmp_path):
    root, _, _, result = sweep
    out = tmp_path / "t.csv"
    r = cli("transfer", str(root), "--json", "--table", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["table"] == str(out)
    r = cli("transfer", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == result
    out.write_text("model.d_model,optim.lr\n32,0.01\n")
    r = cli("transfer", str(out))
    assert r.returncode == 2 and "missing column(s) seed, final_eval_loss, status" in r.stderr


def test_normalized_sigma_at_each_optimum(tmp_path):
    """sigma_norm_hidden (geometric mean over the block matrices) interpolated at each width's fitted optimum."""
    root = tmp_path / "wd"
    root.mkdir()
    for w in (32, 64, 128):
        for x in (-8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0):
            for s in (0, 1):
                sigma = {"block_0/mlp/up/kernel": 2.0 ** (0.5 * x), "block_1/mlp/up/kernel": 2.0 ** (0.5 * x + 2),
                         "readout/kernel": 99.0, "embed/embedding": None}
                write_run(root, config(w, -6.0, s, wd=2.0**x), "completed",
                          3.0 + 0.05 * (x + 5.0 + math.log2(w / 32)) ** 2, final_sigma_normalized=sigma)
    table = T.load_runs(root)
    p = T.analyze_transfer(table, hp="optim.weight_decay", bootstrap=0)["panels"][0]
    assert np.allclose(p["log2_opt"], [-5.0, -6.0, -7.0], atol=1e-6)
    expect = [2.0 ** (0.5 * x + 1) for x in p["log2_opt"]]  # geometric mean of the two block matrices
    assert np.allclose(p["sigma_norm_at_opt"], expect, rtol=1e-6)
    assert math.isclose(p["sigma_norm_spread"], 2.0, rel_tol=1e-6)
    rule = T.analyze_transfer(table, hp="optim.weight_decay", bootstrap=0, hp_exponent=-1.0)  # lambda ~ 1/width
    assert np.allclose(rule["panels"][0]["log2_opt"], -5.0, atol=1e-6) and rule["panels"][0]["drift"] < 1e-6
    assert np.allclose(rule["panels"][0]["sigma_norm_at_opt"], expect, rtol=1e-6)  # the same runs, same optima
    assert "transfer of optim.weight_decay / (d_model/axis0)^-1" in T.format_report(rule)
    assert "normalized sigma_max of hidden matrices at the optimum" in T.format_report(
        T.analyze_transfer(table, hp="optim.weight_decay", bootstrap=0))


def test_profile_tables_hold_the_curves(tmp_path, cli):
    """--profile: per width and grid point, the seed-mean loss over the width's lowest and the normalized sigma."""
    root = tmp_path / "p"
    root.mkdir()
    for w in (32, 64):
        for x in (-6.0, -5.0, -4.0):
            for s, shift in ((0, 0.0), (1, 0.02)):
                write_run(root, config(w, -6.0, s, wd=2.0**x), "completed", 3.0 + 0.1 * (x + 6) * w / 32 + shift,
                          final_sigma_normalized={"block_0/attn/out/kernel": 0.5 * (s + 1)})
    (p,) = TP.profiles(T.load_runs(root), "optim.weight_decay", "model.d_model")
    assert p["x"] == [-6.0, -5.0, -4.0] and sorted(p["rows"]) == [32, 64]
    assert p["rows"][64][-6.0][0] == 0.0
    assert math.isclose(p["rows"][64][-4.0][0], 100 * (3.41 / 3.01 - 1), rel_tol=1e-9)
    assert math.isclose(p["rows"][32][-5.0][1], math.sqrt(0.5 * 1.0), rel_tol=1e-9)  # geometric mean over seeds
    r = cli("transfer", str(root), "--hp", "optim.weight_decay", "--profile")
    assert r.returncode == 0, r.stderr
    assert "| 64 | +0.00% | +6.64% | +13.29% | 3.0100 |" in r.stdout and "| 32 | 0.707 | 0.707 | 0.707 |" in r.stdout
