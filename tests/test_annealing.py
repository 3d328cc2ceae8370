"""The LR-annealing law (analysis/annealing.py): S1/S2 by hand, recovery on synthetic curves, cross-schedule
prediction, the lam search, alignment with the logs, errors, and real runs when a sweep directory is present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from testbed.analysis import annealing as AN

from testbed import schedules
from testbed.config import ConfigError

from .conftest import ROOT

T, WARMUP, PEAK = 2000, 100, 1e-3
TRUE = {"L0": 2.0, "A": 0.6, "alpha": 0.5, "C": 0.4}
# a sweep with two seeds of one decaying-LR run (e.g. configs/transfer_lr_markov.yaml); by default the test trains one
REAL_RUNS = os.environ.get("TESTBED_ANNEALING_RUNS")
# configs/transfer_lr_markov.yaml's recipe at its base width (muP, width 32, WSD with a linear cooldown), two seeds
MARKOV_SWEEP = {
    "base": "tiny.yaml",
    "set": {"model.vocab_size": 128, "data.n_skills": 64, "model.d_model": 32, "model.n_heads": 2,
            "param.name": "mup", "param.base_width": 32, "train.steps": 300, "train.eval_every": 300,
            "train.checkpoint_every": 300, "optim.lr": 2.0 ** -6, "optim.warmup_steps": 30, "optim.schedule": "wsd",
            "optim.cooldown_frac": 0.3, "optim.cooldown_shape": "linear", "optim.final_lr_frac": 0.0,
            "optim.grad_clip": None, "model.zero_init_readout": True},
    "grid": {"seed": [0, 1]},
}


def areas_loop(lr, lam, warmup_steps=0):
    """The reference's definition, one step at a time (independent of areas' cumsum/lfilter)."""
    peak = max(lr[: warmup_steps + 1]) if warmup_steps else None
    s1 = s2 = m = 0.0
    prev, out = None, []
    for i, eta in enumerate(lr):
        eta = peak if i < warmup_steps else float(eta)
        m = lam * m + (0.0 if prev is None else prev - eta)
        s1, s2, prev = s1 + eta, s2 + m, eta
        out.append((s1, s2))
    return np.array(out).T


def lrs() -> dict[str, np.ndarray]:
    """Peak 1e-3, 100 warmup steps, 2000 steps: cosine (to 0.1) and WSD with a linear cooldown over the last 20%."""
    steps = jnp.arange(T)
    return {"cos": PEAK * np.asarray(schedules.cosine(T, WARMUP)(steps), np.float64),
            "wsd": PEAK * np.asarray(schedules.wsd(T, WARMUP, 0.2, 0.0, "linear")(steps), np.float64)}


def synthetic_curves(params=TRUE, lam=0.999, noise=1e-4, seed=0, every=1) -> pd.DataFrame:
    """Curves as load.curves() gives them: logged step k has update k's lr, train_loss after k - 1 updates,
    eval_loss after k updates (both from the law, times log-normal noise)."""
    rng, frames = np.random.default_rng(seed), []
    for name, lr in lrs().items():
        s1, s2 = areas_loop(lr, lam, WARMUP)
        L = params["L0"] + params["A"] * s1 ** -params["alpha"] - params["C"] * s2
        train = np.r_[np.nan, L[:-1]] * np.exp(noise * rng.standard_normal(T))
        frames.append(pd.DataFrame({"run_id": name, "step": np.arange(1, T + 1), "lr": lr, "train_loss": train,
                                    "eval_loss": L, "optim.warmup_steps": WARMUP}).iloc[every - 1::every])
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def cosine_fit():
    df = synthetic_curves()
    return df, AN.fit_annealing(df, fit_runs=["cos"], metric="train_loss", lam=0.999)  # noisy metric, S1 = 0 at step 1


# --- areas ----------------------------------------------------------------------------------------------------------

def test_areas_constant_lr():
    S1, S2 = AN.areas(np.full(50, 3e-4))
    np.testing.assert_allclose(S1, 3e-4 * np.arange(1, 51))  # S1 = eta * s after s updates
    np.testing.assert_array_equal(S2, 0.0)


def test_areas_step_decay_by_hand():
    # lr 1, 1, 0.5, 0.5, 0.5 with lam = 0.5: drops 0, 0, 0.5, 0, 0 -> m = 0, 0, 0.5, 0.25, 0.125
    S1, S2 = AN.areas(np.array([1.0, 1.0, 0.5, 0.5, 0.5]), lam=0.5)
    np.testing.assert_allclose(S1, [1.0, 2.0, 2.5, 3.0, 3.5])
    np.testing.assert_allclose(S2, [0.0, 0.0, 0.5, 0.75, 0.875])
    # a second drop adds its own momentum on top of the decaying first: 1 -> 0.5 -> 0.25
    _, S2 = AN.areas(np.array([1.0, 0.5, 0.25]), lam=0.5)
    np.testing.assert_allclose(S2, [0.0, 0.5, 0.5 + (0.25 + 0.25)])


def test_areas_warmup_counted_at_peak_and_match_the_loop():
    lr = np.array([0.25, 0.5, 0.75, 1.0, 1.0, 0.6, 0.3])
    S1, S2 = AN.areas(lr, lam=0.9, warmup_steps=3)
    np.testing.assert_allclose(S1, np.cumsum([1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.3]))
    np.testing.assert_array_equal(S2[:5], 0.0)  # no negative momentum from the warmup ramp
    np.testing.assert_allclose(np.stack([S1, S2]), areas_loop(lr, 0.9, 3))
    for lr in lrs().values():
        np.testing.assert_allclose(np.stack(AN.areas(lr, 0.999, WARMUP)), areas_loop(lr, 0.999, WARMUP),
                                   rtol=1e-9, atol=1e-12)


# --- fits -----------------------------------------------------------------------------------------------------------

def test_fit_on_cosine_recovers_parameters_and_predicts_wsd(cosine_fit):
    df, res = cosine_fit
    assert res["law"] == "annealing" and res["ci"] is None and res["derived"] == {}
    assert set(res["params"]) == {"L0", "A", "alpha", "C", "lam"} and res["params"]["lam"] == 0.999
    assert res["n_points"] == T - 1  # train_loss at step 1 is before any update (S1 = 0)
    d = res["diagnostics"]
    assert d["converged"] and d["fit_runs"] == ["cos"] and d["lam_chosen_by"] == "fixed" and d["at_bound"] == []
    assert d["mean_abs_rel_error"] < 3e-4 and d["rmse"] < 1e-3
    json.dumps(res)
    p = res["params"]
    for k in TRUE:
        assert p[k] == pytest.approx(TRUE[k], rel=0.1), k
    pred = AN.predict_runs(res, df, ["wsd"])["wsd"]
    assert pred["n_points"] == T - 1 and pred["final_step"] == T
    assert pred["mean_abs_rel_error"] < 5e-3 and abs(pred["final_rel_error"]) < 5e-3
    # predict_curve: the WSD curve from its LR sequence alone (entry i: after i + 1 updates)
    curve = AN.predict_curve(p, lrs()["wsd"], warmup_steps=WARMUP)
    truth = df[df.run_id == "wsd"]["eval_loss"].to_numpy()
    assert np.mean(np.abs(curve - truth) / truth) < 5e-3


def test_lam_grid_search_picks_the_generating_lam():
    df = synthetic_curves(lam=0.995, seed=1)
    res = AN.fit_annealing(df, fit_runs=["cos"], lam=None, metric="train_loss")
    d = res["diagnostics"]
    assert d["lam_chosen_by"] == "grid" and set(d["lam_search"]) == {str(x) for x in AN.LAMS}
    assert res["params"]["lam"] == 0.995
    assert min(d["lam_search"].values()) == d["objective"]
    assert res["params"]["C"] == pytest.approx(TRUE["C"], rel=0.1)


@pytest.mark.parametrize("metric", ["train_loss", "eval_loss"])
def test_predict_runs_aligns_metrics_with_updates(metric):
    """Exact parameters predict the noise-free logs exactly, each metric at its own update count; with every
    10th step logged, the interpolated LR only blurs the corner where the cooldown starts."""
    exact = {"params": {**TRUE, "lam": 0.999}, "diagnostics": {"metric": metric}}
    df = synthetic_curves(noise=0.0)
    for rid, r in AN.predict_runs(exact, df, ["cos", "wsd"]).items():
        assert r["mean_abs_rel_error"] < 1e-9, rid
    sparse = AN.predict_runs(exact, synthetic_curves(noise=0.0, every=10), ["cos", "wsd"])
    assert all(r["mean_abs_rel_error"] < 1e-4 for r in sparse.values())
    assert all(r["final_step"] == T for r in sparse.values())


def test_errors_name_the_problem():
    df = synthetic_curves(noise=0.0)
    with pytest.raises(ConfigError, match="not in the curves"):
        AN.fit_annealing(df, fit_runs=["nope"])
    const = df[df.run_id == "cos"].assign(lr=PEAK, **{"optim.warmup_steps": 0})
    with pytest.raises(ConfigError, match="S2 is constant"):
        AN.fit_annealing(const)
    with pytest.raises(ConfigError, match="no 'lr' column"):
        AN.fit_annealing(df.drop(columns="lr"))


# --- real runs ------------------------------------------------------------------------------------------------------

def _seed_pair(sweep: Path) -> tuple[str, str] | None:
    """Two completed runs of a sweep that differ only in seed (manifest.json), with a decaying LR."""
    from testbed.analysis import load as LD

    ok = set(LD.usable(LD.load(sweep, metric="final_train_loss"))[0]["run_id"])
    runs = json.loads((sweep / "manifest.json").read_text())["runs"]
    by_rest: dict[str, dict] = {}
    for rid, r in sorted(runs.items(), key=lambda kv: kv[1]["name"]):
        v = dict(r["varied"])
        seed = v.pop("seed", None)
        if rid in ok and seed is not None:
            by_rest.setdefault(json.dumps(v, sort_keys=True), {})[seed] = rid
    pairs = [tuple(s.values())[:2] for s in by_rest.values() if len(s) >= 2]
    return pairs[len(pairs) // 2] if pairs else None


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> Path:
    """TESTBED_ANNEALING_RUNS when set, else two seeds of configs/transfer_lr_markov.yaml's base-width run, trained
    here (2 x 300 steps of a width-32 model: ~20 s on 2 cores)."""
    if REAL_RUNS:
        if not (Path(REAL_RUNS) / "manifest.json").is_file():
            pytest.fail(f"TESTBED_ANNEALING_RUNS={REAL_RUNS} is not a testbed sweep directory (no manifest.json)")
        return Path(REAL_RUNS)
    import shutil

    import yaml
    from testbed.launch import sweep

    tmp = tmp_path_factory.mktemp("annealing_runs")
    shutil.copy(ROOT / "configs" / "tiny.yaml", tmp / "tiny.yaml")
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(MARKOV_SWEEP, sort_keys=False))
    out = sweep.run_sweep(tmp / "sweep.yaml", tmp / "runs", workers=2, log=lambda _: None)
    assert out["ok"], out
    return tmp / "runs"


def test_real_runs_fit_one_seed_predict_the_other(real_runs):
    """Per-step train loss of a small-batch run is noisy (~10% here), so the curves are smoothed (centred
    31-step mean) before fitting; the law fitted on seed A's curve predicts seed B's. On a short curve (300 steps)
    L0, A and alpha trade off along a flat valley (alpha -> 0, L0 < 0), so the fit may report converged=False and
    L0 at_bound; the test holds the predictions to 3%, not the parameters."""
    from testbed.analysis import load as LD

    pair = _seed_pair(real_runs)
    assert pair is not None, f"{real_runs}: no two completed runs that differ only in seed"
    df = LD.curves(real_runs).query("run_id in @pair").sort_values(["run_id", "step"])
    assert np.ptp(df["lr"].dropna()) > 0, "the runs' LR never changes; the annealing law needs a decay"
    df["train_loss"] = df.groupby("run_id")["train_loss"].transform(
        lambda s: s.rolling(31, center=True, min_periods=31).mean())
    warm = int(pd.to_numeric(df.get("optim.warmup_steps", pd.Series([0]))).fillna(0).max())
    res = AN.fit_annealing(df, fit_runs=[pair[0]], skip_steps=warm, lam=0.999)
    assert np.all(np.isfinite(list(res["params"].values()))) and "converged" in res["diagnostics"]
    assert res["diagnostics"]["mean_abs_rel_error"] < 0.03
    pred = AN.predict_runs(res, df, [pair[1]], skip_steps=warm)[pair[1]]
    assert pred["mean_abs_rel_error"] < 0.03 and abs(pred["final_rel_error"]) < 0.03


def test_cli_fits_one_schedule_and_predicts_the_held_out_one(tmp_path, cli):
    """`testbed fit annealing CURVES.csv --holdout "run_id == 'wsd'"`: fit on cosine, predict the WSD curve."""
    path = tmp_path / "curves.csv"
    synthetic_curves(every=5).to_csv(path, index=False)
    r = cli("fit", "annealing", str(path), "--holdout", "run_id == 'wsd'", "--json", "--plot",
            str(tmp_path / "anneal.png"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["law"] == "annealing" and out["params"]["alpha"] == pytest.approx(TRUE["alpha"], rel=0.05)
    assert list(out["holdout"]["runs"]) == ["wsd"] and out["holdout"]["mean_abs_rel_error"] < 0.005
    assert (tmp_path / "anneal.png").stat().st_size > 10_000 and out["plot"] == str(tmp_path / "anneal.png")
    bad = cli("fit", "annealing", str(path), "--bootstrap", "10")
    assert bad.returncode == 2 and "--bootstrap" in bad.stderr
