"""Sweep planning: units (runs or packs), workers and the layout choice; and a packed sweep end to end."""

from __future__ import annotations

import json

import pytest
from testbed.launch import layout as L
from testbed.launch import plan, sweep

from testbed import config as C

from .test_sweep import TINY, write_sweep


def _runs(tmp_path, est_s=1.0, **spec):
    return [(r.run_id, r.cfg, est_s) for r in sweep.expand(write_sweep(tmp_path, set=TINY, **spec))]


def test_explicit_pack_groups_same_shape_runs_in_sweep_order(tmp_path):
    # lr x seed share a program; the parametrization splits it: 2 programs x 4 runs
    runs = _runs(tmp_path, grid={"param.name": ["sp", "mup"], "optim.lr": [1e-3, 2e-3], "seed": [0, 1]})
    p = plan.plan(runs, workers=2, pack=3, log=lambda _: None)
    ids = [rid for rid, _, _ in runs]
    assert p.workers == 2 and p.layout == L.Layout(2, 3)
    assert [len(u) for u in p.units] == [3, 1, 3, 1]
    assert sorted(sum(p.units, [])) == sorted(ids)
    name = {rid: cfg.param.name for rid, cfg, _ in runs}
    assert all(len({name[rid] for rid in u}) == 1 for u in p.units)  # one program per unit
    assert p.units[0] == ids[:3]  # the first unit holds the sweep's first runs
    assert "--xla_cpu_multi_thread_eigen=false" in p.env["XLA_FLAGS"]  # 2 processes: single-threaded XLA each


def test_runs_packs_do_not_support_train_alone(tmp_path):
    runs = _runs(tmp_path, grid={"seed": [0, 1, 2]})
    rid, cfg, est = runs[0]
    raw = C.to_dict(cfg)
    raw["train"]["checkpoint_steps"] = [3]
    runs[0] = (rid, C.from_dict(raw), est)
    p = plan.plan(runs, workers=1, pack=4, log=lambda _: None)
    assert p.units == [[rid], [runs[1][0], runs[2][0]]]


def test_auto_layout_one_at_a_time_for_short_sweeps_cached_or_measured_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path / "layouts.json")
    runs = _runs(tmp_path, grid={"seed": [0, 1, 2, 3]})
    p = plan.plan(runs, log=lambda _: None)
    assert p.layout == L.SEQUENTIAL and p.workers == 1 and all(len(u) == 1 for u in p.units)
    assert "--layout measure" in p.why

    measured = []

    def fake_measure(shape, n_runs, duration_s, rounds, cores):  # the timing itself: tests/test_pack.py
        measured.append(n_runs)
        return {"best_layout": L.Layout(2, 2, L.NO_YNN).as_dict(), "best_speedup_vs_sequential": 1.5,
                "layouts": []}

    monkeypatch.setattr(L, "measure_layouts", fake_measure)
    long = [(rid, cfg, plan.MEASURE_MIN_S) for rid, cfg, _ in runs]  # worth a minute of measuring
    logs = []
    p = plan.plan(long, log=logs.append)
    assert measured == [4] and any("measuring layouts" in s for s in logs)
    assert p.layout == L.Layout(2, 2, L.NO_YNN) and p.workers == 2 and [len(u) for u in p.units] == [2, 2]
    assert L.NO_YNN[0] in p.env["XLA_FLAGS"]
    # cached now: a short sweep of the same shape reuses it without measuring
    p = plan.plan(runs, log=lambda _: None)
    assert measured == [4] and p.layout == L.Layout(2, 2, L.NO_YNN) and "earlier" in p.why
    plan.plan(runs, mode="measure", log=lambda _: None)  # --layout measure: measure again
    assert measured == [4, 4]


def test_other_backends_take_pack_from_the_flag_and_bad_values_exit_2(tmp_path, cli):
    runs = _runs(tmp_path, grid={"seed": [0, 1, 2]})
    p = plan.plan(runs, backend="slurm", pack=2, log=lambda _: None)
    assert [len(u) for u in p.units] == [2, 1] and p.env is None
    with pytest.raises(C.ConfigError, match="--pack: must be >= 1"):
        plan.plan(runs, pack=0)
    r = cli("sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"), "--pack", "0")
    assert r.returncode == 2 and "--pack" in r.stderr and not (tmp_path / "out" / runs[0][0]).exists()


def test_packed_sweep_trains_each_run_into_its_own_directory(tmp_path):
    spec = write_sweep(tmp_path, set=TINY, grid={"optim.lr": [1e-3, 3e-3], "seed": [0, 1]})
    out = tmp_path / "out"
    logs = []
    summary = sweep.run_sweep(spec, out, workers=1, pack=4, log=logs.append)
    assert summary["ok"] and summary["counts"] == {"completed": 4}, logs
    assert any("1 pack(s) of up to 4" in s for s in logs)
    finals = set()
    for r in sweep.expand(spec):
        s = json.loads((out / r.run_id / "summary.json").read_text())
        assert s["packed"] == 4 and s["steps"] == TINY["train.steps"]
        rows = [json.loads(line) for line in (out / r.run_id / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(1, TINY["train.steps"] + 1))
        finals.add(s["final_eval_loss"])
    assert len(finals) == 4  # four different runs, not one copied
    again = sweep.run_sweep(spec, out, pack=4, log=logs.append)
    assert again["trained"] == 0
