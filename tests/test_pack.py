from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from testbed import config as C
from testbed.pack import train_pack
from testbed.train import train
from testbed.vmappable import group_by_pack, pack_conflict, pack_key

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "data.seq_len=32", "train.batch_size=8",
        "data.eval_sequences=16",
        "optim.warmup_steps=0", "optim.grad_clip=null", "optim.schedule=constant", "train.steps=12",
        "train.eval_every=6", "train.checkpoint_every=4", "train.sigma_every=6"]
CURVE_KEYS = ("step", "tokens", "flops", "lr", "train_loss", "loss_with_zloss", "grad_norm", "param_norm",
              "update_ratio", "eval_loss", "eval_loss_se", "eval_excess")
quiet = lambda _: None


def cfg(*overrides: str) -> C.Config:
    return C.load(TINY, [*FAST, *overrides])


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_curves(a, b, rtol: float = 1e-4) -> None:
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert set(x) - {"epochs"} == set(y) - {"epochs"}
        for k in CURVE_KEYS:
            if k in x:
                np.testing.assert_allclose(float(x[k]), float(y[k]), rtol=rtol, atol=1e-7, err_msg=f"{k} at {x}")
        if "sigma_max" in x:
            for name, v in x["sigma_max"].items():
                np.testing.assert_allclose(float(v), float(y["sigma_max"][name]), rtol=rtol, err_msg=name)


def test_pack_key_groups_only_vmappable_differences():
    a = cfg()
    assert pack_key(a) == pack_key(cfg("optim.lr=0.1", "seed=3", "optim.weight_decay=0.1", "model.init_std=0.05"))
    assert pack_key(a) != pack_key(cfg("model.d_model=64"))
    assert pack_key(a) != pack_key(cfg("param.alpha_out=2.0"))  # a forward multiplier: not vmappable
    assert "model.d_model" in pack_conflict([a, cfg("model.d_model=64")])
    assert group_by_pack([a, cfg("model.d_model=64"), cfg("seed=1"), cfg("seed=2")], max_pack=2) == [[0, 2], [3], [1]]


CFGS = [("optim.lr=1e-2", "seed=0"),
        ("optim.lr=3e-3", "seed=1", "optim.weight_decay=0.1", "model.init_std=0.03"),
        ("optim.lr=1e30", "seed=0")]  # diverges at once


@pytest.fixture(scope="module")
def pack3(tmp_path_factory):
    """One pack of 3 (LR, seed, weight decay, init scale differ; the third diverges), trained once."""
    root = tmp_path_factory.mktemp("pack3")
    cfgs = [cfg(*o) for o in CFGS]
    dirs = [root / f"p{i}" for i in range(3)]
    return cfgs, dirs, train_pack(cfgs, dirs, progress=False, log=quiet)


def test_packed_matches_one_by_one_and_isolates_a_diverging_member(pack3, tmp_path):
    """Each completed member's curve, eval, sigma_max and summary match its own testbed.train run; the
    diverging member stops alone, with no checkpoint past its divergence."""
    cfgs, dirs, packed = pack3
    assert [s["status"] for s in packed] == ["completed", "completed", "diverged"]
    for i in range(2):
        single = train(cfgs[i], tmp_path / f"s{i}", progress=False, log=quiet)
        p = packed[i]
        assert p["status"] == single["status"] and p["steps"] == single["steps"] == 12 and p["packed"] == 3
        assert set(single) <= set(p)
        assert_same_curves(dirs[i], tmp_path / f"s{i}")
        assert p["final_eval_loss"] == pytest.approx(single["final_eval_loss"], rel=1e-4)
        assert p["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-4)
        assert p["param_groups"] == single["param_groups"]
    d = rows(dirs[2])
    assert len(d) == packed[2]["steps"] < 12 and not math.isfinite(float(d[-1]["train_loss"]))
    assert json.loads((dirs[2] / "summary.json").read_text())["status"] == "diverged"
    assert sorted(int(p.name) for p in (dirs[0] / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert not any(p.name.isdigit() and int(p.name) > packed[2]["steps"] for p in (dirs[2] / "checkpoints").iterdir())
    # a completed pack is not trained again
    again = train_pack(cfgs, dirs, progress=False, log=quiet)
    assert again == [json.loads((d / "summary.json").read_text()) for d in dirs]


def test_stopped_pack_resumes_to_the_same_curves(pack3, tmp_path):
    """A pack stopped mid-run (as by SIGTERM) checkpoints where it is; resuming, here from members at different
    steps, reproduces the uninterrupted curves."""
    cfgs, ref, _ = pack3
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    logged = lambda: (dirs[0] / "metrics.jsonl").exists() and len(rows(dirs[0])) >= 5
    out = train_pack(cfgs[:2], dirs, progress=False, log=quiet, should_stop=logged)
    assert out == [{"status": "incomplete", "steps": 6}] * 2
    assert [r["step"] for r in rows(dirs[0])] == list(range(1, 7))
    assert not (dirs[0] / "summary.json").exists()
    shutil.rmtree(dirs[1] / "checkpoints" / "6")  # member 1 now resumes from step 4, member 0 from 6
    logs = []
    done = train_pack(cfgs[:2], dirs, progress=False, log=logs.append)
    assert [s["status"] for s in done] == ["completed", "completed"]
    assert any("different steps" in line for line in logs)
    for a, b in zip(dirs, ref[:2], strict=True):
        assert_same_curves(a, b)
    assert [r["step"] for r in rows(dirs[1])] == list(range(1, 13))


def test_train_pack_refuses_configs_that_differ_in_shape(tmp_path):
    with pytest.raises(C.ConfigError, match="model.d_model"):
        train_pack([cfg(), cfg("model.d_model=64")], [tmp_path / "a", tmp_path / "b"], progress=False, log=quiet)
    assert not (tmp_path / "a").exists()


def test_cli_train_pack_trains_run_dirs(tmp_path, cli):
    dirs = []
    for i, lr in enumerate(("1e-2", "3e-3")):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "config.yaml").write_text(C.dump_yaml(cfg(f"optim.lr={lr}", f"seed={i}", "train.steps=4",
                                                       "train.sigma_every=0")))
        dirs.append(str(d))
    res = cli("train-pack", *dirs, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert [r["status"] for r in out] == ["completed", "completed"]
    assert json.loads((tmp_path / "r1" / "summary.json").read_text())["packed"] == 2
    bad = cli("train-pack", dirs[0], str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "config.yaml" in bad.stderr


def test_layout_measurement_and_cached_choice(tmp_path):
    """The timing workers' protocol end to end (tiny shape, short windows); choose_layout reads its cache."""
    from testbed.launch.layout import (
        NO_YNN,
        SEQUENTIAL,
        Layout,
        _canonical,
        candidates,
        choose_layout,
        machine_id,
        measure_layouts,
    )

    small = cfg("model.d_model=16", "data.seq_len=16", "train.batch_size=4")
    res = measure_layouts(small, 2, duration_s=0.2, rounds=1, layouts=[SEQUENTIAL, Layout(1, 2)])
    names = [r["name"] for r in res["layouts"]]
    assert names == ["1proc_x_pack1", "1proc_x_pack2"] and res["sequential_tokens_per_s"] > 0
    assert res["speedup_vs_sequential"] == pytest.approx(res["tokens_per_s"] / res["sequential_tokens_per_s"])
    assert [lay.name for lay in candidates(8, 2)][:7] == ["1proc_x_pack1", "1proc_x_pack2", "1proc_x_pack4",
                                                           "1proc_x_pack8", "2proc_x_pack1", "2proc_x_pack2",
                                                           "2proc_x_pack4"]
    assert Layout(2, 2, NO_YNN) in candidates(8, 2) and len(candidates(8, 2)) == 14
    cache = tmp_path / "layouts.json"
    key = f"{pack_key(_canonical(small))}|8|{machine_id()}|2"
    cache.write_text(json.dumps({key: {"layout": Layout(2, 2, NO_YNN).as_dict()}}))
    assert choose_layout(small, 8, cores=[0, 1], cache=cache) == Layout(2, 2, NO_YNN)


def test_bench_pack_cli_measures_k_runs_at_the_given_width(monkeypatch, capsys):
    """`testbed bench CONFIG --pack K --d-model W` (README): the layouts are measured for K runs of the config with
    d_model = W (and any --set), and the measurement is printed as JSON."""
    from testbed.launch import layout
    from testbed.launch.cli import main

    seen = {}

    def fake_measure(cfg, n_runs, duration_s, rounds, log=None):
        seen.update(d_model=cfg.model.d_model, seq_len=cfg.data.seq_len, n_runs=n_runs, duration_s=duration_s,
                    rounds=rounds)
        return {"K": n_runs, "d_model": cfg.model.d_model, "best_speedup_vs_sequential": 1.5}

    monkeypatch.setattr(layout, "measure_layouts", fake_measure)
    assert main(["bench", str(ROOT / "configs" / "tiny.yaml"), "--pack", "4", "--d-model", "96", "--set",
                 "data.seq_len=32", "--duration", "0.5", "--rounds", "2", "--json"]) == 0
    assert seen == {"d_model": 96, "seq_len": 32, "n_runs": 4, "duration_s": 0.5, "rounds": 2}
    assert json.loads(capsys.readouterr().out) == {"K": 4, "d_model": 96, "best_speedup_vs_sequential": 1.5}
