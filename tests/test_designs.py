"""Sweep designs (launch/designs.py): IsoFLOP, ladder, transfer and WSD-branch expansion, and branched training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from testbed.launch import cli, sweep

from testbed import config as C
from testbed import schedules, shapes

from .conftest import ROOT

TINY = {  # trains a few dozen steps in seconds: the cost is jax import + compile; the designs set the shapes
    "data.seq_len": 16, "data.eval_sequences": 8,
    "data.n_skills": 64, "train.batch_size": 4, "train.eval_every": 1000,
    "train.checkpoint_every": 1000, "optim.warmup_steps": 0,
}
TPS = 4 * 16  # tokens per step of TINY


def write_sweep(tmp_path, name="sweep.yaml", **spec):
    """A sweep file next to a copy of configs/tiny.yaml (its base)."""
    shutil.copy(ROOT / "configs" / "tiny.yaml", tmp_path / "tiny.yaml")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", **spec}, sort_keys=False))
    return path


def expand(tmp_path, design, name="sweep.yaml", **spec):
    """The runs and the messages (dropped points) of a sweep with this design."""
    msgs: list[str] = []
    runs = sweep.expand(write_sweep(tmp_path, name, set={**TINY, **spec.pop("set", {})}, design=design, **spec),
                        log=msgs.append)
    return runs, msgs


def test_isoflop_tokens_from_exact_flops_per_token(tmp_path):
    budgets = [2e8, 8e8]
    design = {"type": "isoflop", "budgets": budgets, "widths": [16, 32, 48], "depth": 1, "head_dim": 8}
    runs, msgs = expand(tmp_path, design)
    assert len(runs) == 2 * 3 and not msgs
    for r in runs:
        fpt = shapes.count(r.cfg).flops_per_token
        assert fpt != shapes.count(r.cfg).flops_per_token_6n  # exact accounting, not 6N
        budget, steps = r.varied["budget"], r.cfg.train.steps
        assert r.cfg.train.tokens is None and steps == round(budget / fpt / TPS)
        assert abs(steps * TPS * fpt - budget) <= 0.5 * TPS * fpt  # C = D * flops_per_token within half a step
        assert r.cfg.model.n_heads == r.cfg.model.d_model // 8 and r.cfg.model.n_layers == 1
    assert [(r.varied["budget"], r.varied["model.d_model"]) for r in runs] == [
        (b, w) for b in budgets for w in (16, 32, 48)]
    again, _ = expand(tmp_path, design, name="again.yaml")
    assert [r.run_id for r in again] == [r.run_id for r in runs]  # stable ids
    assert all(r.run_id == sweep.run_id(r.cfg) for r in runs)


def test_isoflop_drops_short_points_with_a_message(tmp_path):
    design = {"type": "isoflop", "budgets": [2e8, 1e9], "widths": [16, 64], "depth": 1, "head_dim": 8,
              "min_steps": 30}
    runs, msgs = expand(tmp_path, design)
    steps = {(r.varied["budget"], r.cfg.model.d_model): r.cfg.train.steps for r in runs}
    assert all(s >= 30 for s in steps.values()) and (2e8, 64) not in steps and len(runs) == 3
    assert len(msgs) == 1 and "dropped budget=2e+08 d_model=64" in msgs[0] and "< min_steps 30" in msgs[0]
    with pytest.raises(C.ConfigError, match="all 2 points were too short"):
        expand(tmp_path, {**design, "budgets": [1e7]}, name="tiny_budget.yaml")


def test_ladder_fixed_tokens_and_tokens_per_param(tmp_path):
    runs, _ = expand(tmp_path, {"type": "ladder", "widths": [16, 32, 64], "aspect_ratio": 16, "head_dim": 8,
                                "tokens_per_param": [2, 4], "n_params": "nonembedding"})
    assert len(runs) == 6
    assert [r.cfg.model.n_layers for r in runs[::2]] == [1, 2, 4]  # depth = width / aspect_ratio
    for r in runs:
        n = shapes.count(r.cfg).params_nonembedding
        assert abs(r.cfg.train.steps * TPS - r.varied["tokens_per_param"] * n) <= TPS / 2
    fixed, _ = expand(tmp_path, {"type": "ladder", "widths": [16, 32], "depths": [1, 3], "tokens": 6400},
                      name="fixed.yaml")
    assert [(r.cfg.model.n_layers, r.cfg.train.steps) for r in fixed] == [(1, 100), (3, 100)]


def test_transfer_design_is_the_grid_it_abbreviates(tmp_path):
    runs, _ = expand(tmp_path, {"type": "transfer", "lr": {"log2": [-10, -8]}, "widths": [16, 32, 64],
                                "head_dim": 8, "parametrizations": ["sp", "mup"]}, set={"model.head_dim": 8})
    grid = sweep.expand(write_sweep(tmp_path, "grid.yaml", set={**TINY, "model.head_dim": 8},
                                    grid={"optim.lr": {"log2": [-10, -8]}, "param.name": ["sp", "mup"]},
                                    zip={"model.d_model": [16, 32, 64], "model.n_heads": [2, 4, 8]}))
    assert len(runs) == 3 * 2 * 3
    assert [(r.run_id, r.varied) for r in runs] == [(r.run_id, r.varied) for r in grid]


def test_wsd_branch_parent_and_cooldown_children(tmp_path):
    design = {"type": "wsd_branch", "widths": [16, 32], "depth": 1, "head_dim": 8, "tokens": [20 * TPS, 41 * TPS],
              "cooldown_frac": 0.2, "final_lr_frac": 0.0}
    runs, _ = expand(tmp_path, design, set={"optim.warmup_steps": 3})
    assert len(runs) == 2 * 3
    for parent, *children in (runs[:3], runs[3:]):
        assert parent.after is None and parent.varied["role"] == "parent"
        assert parent.cfg.optim.schedule == "constant"
        assert [c.cfg.train.steps for c in children] == [20, 41]
        assert [c.cfg.train.branch_step for c in children] == [16, 33]  # steps - round(0.2 * steps)
        assert parent.cfg.train.steps == 33 and parent.cfg.train.checkpoint_steps == [16, 33]
        for c in children:
            assert c.after == parent.run_id and c.cfg.train.branch_from == parent.run_id
            assert c.cfg.model == parent.cfg.model and c.cfg.optim.schedule == "wsd"
            s, n = c.cfg.train.branch_step, c.cfg.train.steps
            lr_child = np.asarray(schedules.from_config(c.cfg.optim, n)(np.arange(n)))
            lr_parent = np.asarray(schedules.from_config(parent.cfg.optim, 33)(np.arange(s)))
            np.testing.assert_array_equal(lr_child[:s], lr_parent)  # the same schedule up to s ...
            assert lr_child[s] == 1.0 > lr_child[s + 1] and lr_child[-1] == 0.0  # then the cooldown from update s
    rows = sweep.describe(runs)
    child = rows[1]
    assert child["after"] == runs[0].run_id and child["tokens"] == 20 * TPS
    assert child["flops_trained"] < child["flops"]  # a branch trains only its cooldown


def test_wsd_branch_on_isoflop_budgets(tmp_path):
    """budgets instead of tokens: each shape's children sit on the budgets (D = C / exact flops_per_token), so the
    cooldowns form an IsoFLOP grid whose runs of one width share their stable phase."""
    budgets = [4e8, 8e8]
    design = {"type": "wsd_branch", "widths": [16, 32], "depth": 1, "head_dim": 8, "budgets": budgets,
              "cooldown_frac": 0.3}
    runs, _ = expand(tmp_path, design, set={"optim.warmup_steps": 3})
    rows = sweep.describe(runs)
    assert [r.varied["role"] for r in runs] == ["parent", "cooldown", "cooldown"] * 2
    for parent, *children in (runs[:3], runs[3:]):
        assert [c.varied["budget"] for c in children] == budgets
        assert parent.cfg.train.steps == children[-1].cfg.train.branch_step
    for r, row in zip(runs, rows, strict=True):
        if r.varied["role"] == "cooldown":  # within half a step's FLOPs of the budget
            assert row["flops"] == pytest.approx(r.varied["budget"], abs=row["flops"] / r.cfg.train.steps)
    assert runs[1].cfg.train.steps > runs[4].cfg.train.steps  # the narrower width trains on more tokens


def test_design_crossed_with_grid_and_conflicting_keys(tmp_path):
    design = {"type": "isoflop", "budgets": [2e8], "widths": [16, 32], "depth": 1, "head_dim": 8}
    runs, _ = expand(tmp_path, design, grid={"seed": [0, 1]})
    assert [(r.cfg.seed, r.cfg.model.d_model) for r in runs] == [(0, 16), (0, 32), (1, 16), (1, 32)]
    with pytest.raises(C.ConfigError, match="'model.d_model' is set by the isoflop design and by grid"):
        expand(tmp_path, design, name="conflict.yaml", grid={"model.d_model": [16]})


def test_dry_run_shows_n_d_flops_and_est_time(tmp_path, capsys):
    path = write_sweep(tmp_path, set=TINY, design={"type": "isoflop", "budgets": [2e8], "widths": [16, 32],
                                                   "depth": 1, "head_dim": 8})
    assert cli.main(["sweep", str(path), "--dry-run", "--flops-per-s", "1e9"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].split() == ["run_id", "budget", "model.d_model", "model.n_layers", "train.steps", "N", "D",
                                "FLOPs", "est_time", "status"]
    runs = sweep.expand(path)
    for line, r in zip(lines[1:], runs, strict=True):
        cells = line.split()
        acc = shapes.count(r.cfg)
        tokens = r.cfg.train.steps * TPS
        assert int(cells[5].replace(",", "")) == acc.params_total and int(cells[6].replace(",", "")) == tokens
        assert float(cells[7]) == pytest.approx(tokens * acc.flops_per_token, rel=1e-2)
        evals = 8 * 16 * acc.forward_flops_per_token  # one eval, at the end
        assert cells[8] == sweep.fmt_seconds(sweep.RUN_OVERHEAD_S + (tokens * acc.flops_per_token + evals) / 1e9)
    assert "est. time" in out.err and "1e+09 FLOP/s" in out.err
    assert cli.main(["sweep", str(path), "--dry-run", "--flops-per-s", "fast"]) == 2
    assert "--flops-per-s" in capsys.readouterr().err


@pytest.mark.parametrize("design, names", [
    ({"type": "chinchilla"}, ["design.type", "isoflop"]),
    ({"type": "isoflop", "widths": [16]}, ["design.budgets"]),
    ({"type": "isoflop", "budgets": [1e9], "widths": [16], "tokens": 5}, ["design.tokens", "budgets"]),
    ({"type": "isoflop", "budgets": [-1], "widths": [16]}, ["design.budgets", "positive"]),
    ({"type": "isoflop", "budgets": [1e9]}, ["design.widths", "design.shapes"]),
    ({"type": "ladder", "widths": [16, 32], "depths": [1], "tokens": 640}, ["design.depths", "one depth per width"]),
    ({"type": "ladder", "widths": [16], "tokens": 640, "tokens_per_param": 2}, ["design.tokens", "exactly one"]),
    ({"type": "ladder", "widths": [16, 49], "head_dim": 16, "tokens": 640}, ["design ladder", "widths", "49"]),
    ({"type": "transfer", "lr": [1e-3], "widths": [16, 20], "head_dim": 8}, ["widths", "20", "head_dim 8"]),
    ({"type": "wsd_branch", "widths": [16], "tokens": [640], "cooldown_frac": 1.5}, ["design.cooldown_frac"]),
    ({"type": "wsd_branch", "widths": [16], "depth": 1, "tokens": [64]}, ["tokens=64", "no stable phase",
                                                                          "too short"]),
    ({"type": "wsd_branch", "widths": [16], "tokens": [640], "budgets": [1e9]}, ["design.budgets", "exactly one"]),
    ({"type": "wsd_branch", "widths": [16]}, ["design.tokens", "exactly one"]),
    ({"type": "isoflop", "budgets": [1e9], "shapes": [{"d_model": 31}]}, ["d_model=31", "model.n_heads"]),
    ({"type": "isoflop", "budgets": [1e9], "widths": [16], "head_dim": "x"}, ["design.head_dim", "integer"]),
    ({"type": "transfer", "lr": [1e-3], "widths": [16], "parametrizations": []}, ["design.parametrizations"]),
])
def test_bad_design_exits_2_naming_the_field(tmp_path, capsys, design, names):
    path = write_sweep(tmp_path, set=TINY, design=design)
    out = tmp_path / "out"
    for extra in (["--out", str(out)], ["--dry-run"]):
        assert cli.main(["sweep", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert "testbed sweep: error:" in err, err
        for name in names:
            assert name in err, (name, err)
    assert not out.exists()


def test_branch_keys_validated_and_left_out_of_old_run_ids():
    base = C.load(ROOT / "configs" / "tiny.yaml")
    assert "branch_from" not in C.identity_yaml(base) and "checkpoint_steps" not in C.identity_yaml(base)
    for sets, name in [(["train.branch_from=abc"], "train.branch_step"),
                       (["train.branch_from=abc", "train.branch_step=300"], "train.branch_step: 300"),
                       (["train.checkpoint_steps=[0]"], "train.checkpoint_steps"),
                       (["train.branch_from=abc", "train.branch_step=10", "optim.wd_rule=timescale",
                         "optim.tau_frac=0.2"], "optim.wd_rule")]:
        with pytest.raises(C.ConfigError, match=name):
            C.load(ROOT / "configs" / "tiny.yaml", sets)


# --- end to end: a parent and two cooldown children through run_sweep ---------------------------------------

@pytest.fixture(scope="module")
def branched(tmp_path_factory, jax_env):
    """One wsd_branch sweep trained: a 40-step constant-LR parent, cooldown children of 25 and 50 steps."""
    tmp = tmp_path_factory.mktemp("branch")
    path = write_sweep(tmp, set={**TINY, "optim.lr": 1e-2, "optim.warmup_steps": 2, "train.keep_checkpoints": 1},
                       design={"type": "wsd_branch", "widths": [16], "depth": 1, "head_dim": 8,
                               "tokens": [25 * TPS, 50 * TPS], "cooldown_frac": 0.2, "final_lr_frac": 0.0})
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in jax_env.items():
            mp.setenv(k, v)
        logs: list[str] = []
        summary = sweep.run_sweep(path, out, workers=2, log=logs.append)
    return sweep.expand(path), out, summary, logs


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_wsd_branch_children_continue_the_parent_and_cool_down(branched):
    runs, out, summary, logs = branched
    assert summary["ok"] and summary["counts"] == {"completed": 3}, logs
    parent, *children = runs
    prows = metrics(out / parent.run_id)
    assert [r["step"] for r in prows] == list(range(1, 41))
    assert [r["step"] for r in prows if "eval_loss" in r] == [20, 40]  # evaluated at each branch step
    assert sorted(int(p.name) for p in (out / parent.run_id / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    for c in children:
        s, n = c.cfg.train.branch_step, c.cfg.train.steps
        crows = metrics(out / c.run_id)
        assert [r["step"] for r in crows] == list(range(1, n + 1))
        assert crows[:s] == [r for r in prows if r["step"] <= s]  # the parent's curve, row for row
        lrs = [r["lr"] for r in crows[s:]]  # updates s.. (rows s + 1..): the cooldown, peak to zero
        assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
        assert crows[-1]["lr"] == 0.0
        parent_at_s = next(r["eval_loss"] for r in prows if r["step"] == s)
        final = json.loads((out / c.run_id / "summary.json").read_text())
        assert final["status"] == "completed" and final["steps"] == n
        assert final["final_eval_loss"] < parent_at_s  # the cooldown helps
        assert f"at step {s}" in (out / c.run_id / "train.log").read_text()  # 'branching ... at step s'
    # fits take the children's end points; the parent (its LR still at the peak) is a curve, not a point
    from testbed.analysis import load as LD

    rows, excluded = LD.usable(LD.load(out))
    assert sorted(rows["run_id"]) == sorted(c.run_id for c in children) and excluded["wsd_parent"] == 1
    # a second invocation trains nothing
    again = sweep.run_sweep(out / "sweep.yaml", out, log=lambda _: None)
    assert again["trained"] == 0 and again["skipped"] == 3


def test_a_branched_child_equals_an_independent_run_of_its_schedule(branched, tmp_path, jax_env, monkeypatch):
    """The design's premise: a cooldown branched from the parent ends where a whole WSD run of the same length
    would (same batches, same LR at every step), so one parent per width stands in for one run per budget."""
    from testbed.train import train

    runs, out, summary, _ = branched
    child = runs[-1]
    for k, v in jax_env.items():
        monkeypatch.setenv(k, v)
    cfg = C.load(out / child.run_id / "config.yaml", ["train.branch_from=null", "train.branch_step=null"])
    alone = train(cfg, tmp_path / "alone", progress=False, log=lambda _: None)
    branched_final = json.loads((out / child.run_id / "summary.json").read_text())["final_eval_loss"]
    assert alone["final_eval_loss"] == pytest.approx(branched_final, rel=1e-6)


def test_branch_errors_name_the_fix(branched, tmp_path):
    from testbed.train import train

    runs, out, _, _ = branched
    parent, child = runs[0], runs[1]
    raw = C.to_dict(child.cfg)
    cases = [({"branch_from": "no_such_run"}, {}, "no run directory"),
             ({"branch_step": 5}, {}, "no checkpoint at step 5"),
             ({}, {"schedule": "cosine"}, "optim.schedule"),
             ({}, {"lr": 2e-2}, "optim.lr")]
    for i, (train_keys, optim_keys, msg) in enumerate(cases):
        bad = C.from_dict({**raw, "train": {**raw["train"], **train_keys}, "optim": {**raw["optim"], **optim_keys}})
        run_dir = out / f"bad{i}"
        with pytest.raises(C.ConfigError, match=msg):
            train(bad, run_dir, progress=False, log=lambda _: None)
        shutil.rmtree(run_dir)
    assert parent.run_id == child.cfg.train.branch_from
