"""testbed plan: next runs from the current fit (analysis/design.py, launch/nextruns.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testbed.analysis import design as DS
from testbed.launch import nextruns, sweep

from testbed import config as C

from .test_sweep import write_sweep

Q = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
RAW = {"e": np.log(1.8), "a": np.log(400.0), "b": np.log(2000.0), "alpha": 0.34, "beta": 0.37}


def _law(N, D, q=Q):
    return q["E"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]


def test_sherman_morrison_update_matches_refitting_the_information():
    """A pick's predicted width is the delta-method width with that run's information added."""
    rng = np.random.default_rng(0)
    N = np.repeat([1e7, 3e7, 1e8], 4)
    D = 1e19 / (6 * N) * np.tile([0.3, 1, 3, 10], 3)
    y = _law(N, D) * np.exp(0.01 * rng.standard_normal(len(N)))
    s = DS.state(RAW, N, D, y, "loss", 1e21)
    cN, cD = np.array([3e8, 1e9, 1e7]), np.array([5e9, 2e9, 1e11])
    picks = DS.select(s, cN, cD, 6 * cN * cD, k=1, budget=1e30)
    i = picks[0]["index"]
    J = DS.jacobian(s.theta, np.r_[N, cN[i]], np.r_[D, cD[i]])
    info = J.T @ J / s.sigma ** 2
    cov = np.linalg.pinv(info + DS.RIDGE * np.trace(J[:-1].T @ J[:-1] / s.sigma ** 2) * np.eye(5))
    assert picks[0]["width_after"] == pytest.approx(float(s.width(s.grad @ cov @ s.grad)), rel=1e-4)
    assert picks[0]["width_after"] < picks[0]["width_before"] == pytest.approx(float(s.width()))


def test_select_respects_budget_and_k_and_prefers_informative_runs():
    N = np.repeat([1e7, 3e7, 1e8], 3)
    D = 1e18 / (6 * N) * np.tile([0.5, 1, 2], 3)
    s = DS.state(RAW, N, D, _law(N, D) * np.exp(0.01 * np.sin(np.arange(len(N)))), "n_opt", 1e21)
    cN = np.logspace(7, 9, 9)
    cD = 1e19 / (6 * cN)
    cost = 6 * cN * cD
    picks = DS.select(s, cN, cD, cost, k=3, budget=2.5e19)
    assert 1 <= len(picks) <= 2  # three runs of 1e19 do not fit in 2.5e19
    assert sum(p["flops"] for p in picks) <= 2.5e19 * (1 + 1e-9)
    widths = [picks[0]["width_before"]] + [p["width_after"] for p in picks]
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))
    # with k = 1 and no budget limit the pick is the candidate whose added information leaves the narrowest width
    one = DS.select(s, cN, cD, cost, k=1, budget=1e30)[0]
    J0 = DS.jacobian(s.theta, N, D)
    ridge = DS.RIDGE * np.trace(J0.T @ J0 / s.sigma ** 2) * np.eye(5)
    brute = []
    for n, d in zip(cN, cD, strict=True):
        J = np.vstack([J0, DS.jacobian(s.theta, [n], [d])])
        brute.append(float(s.width(s.grad @ np.linalg.pinv(J.T @ J / s.sigma ** 2 + ridge) @ s.grad)))
    assert one["index"] == int(np.argmin(brute))
    assert one["width_after"] == pytest.approx(min(brute), rel=1e-4)


def _fake_sweep(tmp_path, noise=0.005, seed=0):
    """Run directories whose summaries hold losses from the law at each run's exact N and D (no training)."""
    spec = write_sweep(tmp_path, set={"optim.warmup_steps": 0, "data.seq_len": 16, "train.batch_size": 4},
                       design={"type": "isoflop", "budgets": [2e9, 6e9, 2e10], "widths": [16, 24, 32, 48],
                               "depth": 1, "head_dim": 8})
    runs = sweep.expand(spec, log=lambda _: None)
    rows = sweep.describe(runs)
    rng = np.random.default_rng(seed)
    out = tmp_path / "sweep"
    for r, row in zip(runs, rows, strict=True):
        d = out / r.run_id
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(C.dump_yaml(r.cfg))
        N, D = float(row["params_total"]), float(row["tokens"])
        loss = float(_law(N * 1e3, D * 1e3) * np.exp(noise * rng.standard_normal()))  # law in its usual range
        (d / "summary.json").write_text(json.dumps({
            "status": "completed", "params_total": row["params_total"], "tokens": row["tokens"],
            "flops": row["flops"], "final_eval_loss": loss, "steps": r.cfg.train.steps}))
    return out, rows


def test_plan_writes_a_sweep_file_of_exactly_the_proposed_new_runs(tmp_path):
    """In process (the CLI's exit-2 path is tested below): the fit's compiled programs are shared with the
    progressive test, which saves CI a compile per test."""
    from testbed.analysis import report

    sweep_dir, rows = _fake_sweep(tmp_path)
    spent = sum(r["flops"] for r in rows)
    nxt = tmp_path / "next.yaml"
    res = nextruns.plan(sweep_dir, target_flops=1e12, k=3, budget=spent, bootstrap=60, target="n_opt", out=nxt)
    out = json.loads(json.dumps(report.jsonable(nextruns.jsonable(res))))  # what --json prints
    props = out["proposals"]
    assert 1 <= len(props) <= 3
    assert out["planned_flops"] <= spent * (1 + 1e-9)
    assert out["ci"][0] < out["estimate"] < out["ci"][1]
    assert out["width"] == pytest.approx(np.log(out["ci"][1] / out["ci"][0]), rel=1e-6)
    assert props[-1]["width_after"] == out["predicted_width"] < out["width"]
    for p_ in props:  # each proposal explained: its cut per FLOP is its cut over its cost
        assert p_["reduction_per_flop"] == pytest.approx(p_["width_reduction"] / p_["flops"])
    planned = sweep.expand(nxt, log=lambda _: None)
    ids = {r.run_id for r in planned}
    assert ids == {p_["run_id"] for p_ in props}
    assert not ids & {d.name for d in sweep_dir.iterdir()}  # only new runs
    text = nxt.read_text()
    assert text.startswith("# testbed plan") and "narrower" in text
    for r, p_ in zip(sorted(planned, key=lambda r: r.run_id), sorted(props, key=lambda q: q["run_id"]),
                     strict=True):
        assert r.cfg.model.d_model == p_["d_model"] and r.cfg.train.steps == p_["steps"]
    # the text form names each run with its cost and the width it leaves
    text = nextruns.format_text(out)
    assert "pts/1e12 FLOPs" in text and "N_opt" in text and all(p_["run_id"] in text for p_ in props)


def test_plan_bad_input_exits_2_and_writes_nothing(tmp_path, cli):
    sweep_dir, _ = _fake_sweep(tmp_path)
    nxt = tmp_path / "next.yaml"
    p = cli("plan", str(sweep_dir), "--target-flops", "1e12", "--progressive", "--out", str(nxt))
    assert p.returncode == 2 and "--threshold" in p.stderr, p.stderr
    p = cli("plan", str(tmp_path / "nope"), "--target-flops", "1e12")
    assert p.returncode == 2 and "SWEEP_DIR" in p.stderr, p.stderr
    for kw, word in [({"target_flops": -1}, "--target-flops"), ({"k": 0}, "--k"), ({"budget": 0.0}, "--budget"),
                     ({"target": "E"}, "--target")]:
        with pytest.raises(C.ConfigError, match=word):  # the CLI prints these and exits 2, as above
            nextruns.plan(sweep_dir, **{"target_flops": 1e12, "out": nxt, **kw})
    with pytest.raises(C.ConfigError, match="--threshold"):
        nextruns.progressive(sweep_dir, target_flops=1e12, threshold=0)
    assert not nxt.exists() and not (sweep_dir / "plan").exists()


def test_candidates_follow_the_sweeps_ladder(tmp_path):
    sweep_dir, _ = _fake_sweep(tmp_path)
    from testbed.analysis import load as LD

    rows, _ = LD.usable(LD.load(sweep_dir))
    cands = nextruns.candidates(sweep_dir, rows, cap=1e11)
    widths = sorted({c["width"] for c in cands})
    assert {16, 24, 32, 48} <= set(widths) and max(widths) == 144  # 3x the widest, a multiple of head_dim 8
    assert all(c["cfg"].model.n_layers == 1 and c["cfg"].model.resolved_head_dim == 8 for c in cands)
    assert all(c["flops"] <= 1e11 * 1.5 and c["run_id"] not in set(rows["run_id"]) for c in cands)
    assert min(c["steps"] for c in cands) >= rows["steps"].min()
    with pytest.raises(C.ConfigError, match="--widths"):
        nextruns.candidates(sweep_dir, rows, cap=1e11, widths=[20])  # 20 is not a multiple of head size 8


def test_progressive_trains_planned_rounds_into_the_sweep_and_keeps_history(tmp_path, jax_env, monkeypatch):
    """One real round: plan -> train (tiny runs, real trainer) -> refit; the history and the report figure."""
    from testbed.analysis import plotkinds as PK

    for k, v in jax_env.items():
        monkeypatch.setenv(k, v)
    sweep_dir, _ = _fake_sweep(tmp_path)
    before = {d.name for d in sweep_dir.iterdir()}
    kw = dict(target_flops=1e12, threshold=1e-4, budget=1e10, k=2, bootstrap=40, max_rounds=1, workers=2,
              log=lambda _: None)
    out = nextruns.progressive(sweep_dir, **kw)
    assert out["stop"] == "max_rounds" and out["rounds"] == 1
    hist = [json.loads(line) for line in (sweep_dir / "plan" / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in hist] == [0, 1]
    first = hist[0]
    ids = {p["run_id"] for p in first["proposals"]}
    assert {r.run_id for r in sweep.expand(first["sweep_file"], log=lambda _: None)} == ids
    assert {d.name for d in sweep_dir.iterdir()} - before - {"plan", "sweep.yaml", "manifest.json"} == ids
    for rid in ids:  # trained for real, into the same sweep directory
        assert json.loads((sweep_dir / rid / "summary.json").read_text())["status"] == "completed"
    assert hist[1]["runs"] == first["runs"] + len(ids)
    assert first["planned_flops"] <= 1e10 and hist[1]["plan_flops_spent"] == first["planned_flops"]
    assert hist[1]["predicted_by_last_round"] == first["predicted_width"]
    s = PK.draw("plan", PK.Fits(sweep_dir), tmp_path / "plan.png")
    assert s.figure.stat().st_size > 10_000 and "round 0" in s.notes[0] and "stopped: max_rounds" in s.notes[-1]
    with pytest.raises(C.ConfigError, match="--target"):  # another target cannot continue this history
        nextruns.progressive(sweep_dir, **{**kw, "target_flops": 1e13})


def test_a_refit_without_a_compute_optimal_point_is_nan_not_complex():
    """A bootstrap refit with alpha <= 0 has no optimum; its derived values are nan and are left out of CIs."""
    from testbed.analysis import laws

    d = laws.chinchilla_derived({**Q, "alpha": -0.1})
    assert isinstance(d["G"], float) and np.isnan(d["G"])
    arr = laws.chinchilla_derived({**Q, "alpha": np.array([0.34, -0.1])})["G"]
    assert np.isfinite(arr[0]) and np.isnan(arr[1])
    for gone in ("A", "B"):  # a term fitted away (variable projection's NNLS can set A or B to 0): nan, no raise
        assert np.isnan(laws.chinchilla_derived({**Q, gone: 0.0})["G"])
    bad = DS.raw_vector({**RAW, "alpha": -0.1})
    assert np.isnan(DS.target_value(bad, "n_opt", 1e21))
    good = DS.raw_vector(RAW)
    assert DS.boot_values(np.stack([good, bad]), "n_opt", 1e21).shape == (1,)
