from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest
import yaml
from testbed.launch import cli, layout, sweep

from testbed import config as C
from testbed import shapes

from .conftest import ROOT

TINY = {  # a model that trains 5 steps in seconds: the cost is jax import + compile
    "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2, "data.seq_len": 16, "data.eval_sequences": 8,
    "data.n_skills": 64, "train.batch_size": 4, "train.steps": 5, "train.eval_every": 5,
    "train.checkpoint_every": 5, "optim.warmup_steps": 0,
}


def write_sweep(tmp_path, name="sweep.yaml", base="tiny.yaml", **spec):
    """A sweep file next to a copy of configs/tiny.yaml (its base)."""
    shutil.copy(ROOT / "configs" / "tiny.yaml", tmp_path / "tiny.yaml")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": base, **spec}, sort_keys=False))
    return path


def test_expand_grid_times_zip_rows_with_log2_ranges(tmp_path):
    path = write_sweep(tmp_path, set={"train.steps": 30, "model.head_dim": 8},
                       grid={"param.name": ["sp"], "optim.lr": {"log2": [-3, -1, 1]}, "seed": [0, 1]},
                       zip={"model.d_model": [16, 32], "model.n_heads": [2, 4]})
    runs = sweep.expand(path)
    assert len(runs) == 1 * 3 * 2 * 2
    assert {r.cfg.optim.lr for r in runs} == {0.125, 0.25, 0.5}
    assert {(r.cfg.model.d_model, r.cfg.model.n_heads) for r in runs} == {(16, 2), (32, 4)}  # rows, not a product
    assert {r.cfg.seed for r in runs} == {0, 1}
    assert all(r.cfg.train.steps == 30 and r.cfg.model.head_dim == 8 for r in runs)  # set applied to every run
    assert all(r.cfg.model.n_layers == 2 and r.cfg.data.seq_len == 64 for r in runs)  # the base's values
    first = runs[0]
    assert first.varied == {"param.name": "sp", "optim.lr": 0.125, "seed": 0, "model.d_model": 16,
                            "model.n_heads": 2}
    assert first.name == "name=sp,lr=0.125,seed=0,d_model=16,n_heads=2"
    # ids: 12 hex of sha256 of the resolved YAML, distinct, stable across expansions
    for r in runs:
        assert r.run_id == hashlib.sha256(C.identity_yaml(r.cfg).encode()).hexdigest()[:12]
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in sweep.expand(path)] == [r.run_id for r in runs]


def test_log2_ranges_and_numeric_strings(tmp_path):
    path = write_sweep(tmp_path, grid={"optim.lr": {"log2": [-4, -2, 0.5]}, "optim.weight_decay": ["1e-3", 0.1]})
    runs = sweep.expand(path)
    assert sorted({r.cfg.optim.lr for r in runs}) == pytest.approx([2**-4, 2**-3.5, 2**-3, 2**-2.5, 2**-2])
    assert {r.cfg.optim.weight_decay for r in runs} == {1e-3, 0.1}  # YAML's "1e-3" string read as a number
    assert len(runs) == 10
    path = write_sweep(tmp_path, grid={"optim.lr": {"log2": [-2, 0]}})  # step defaults to 1
    assert [r.cfg.optim.lr for r in sweep.expand(path)] == [0.25, 0.5, 1.0]


def test_identical_configs_are_one_run(tmp_path):
    path = write_sweep(tmp_path, grid={"seed": [0, 0, 1], "train.steps": [300, 300.0]})
    runs = sweep.expand(path)
    assert len(runs) == 2 and {r.cfg.seed for r in runs} == {0, 1}
    # a grid point equal to the base's own value is the same run as the base with no grid at all
    base_only = sweep.expand(write_sweep(tmp_path, name="b.yaml", grid={}))
    assert len(base_only) == 1 and base_only[0].run_id in {r.run_id for r in runs}
    assert base_only[0].run_id == sweep.run_id(C.load(ROOT / "configs" / "tiny.yaml"))


def test_dry_run_prints_table_and_writes_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, set={"train.steps": 40}, grid={"optim.lr": {"log2": [-10, -8]}, "seed": [0, 1]},
                       zip={"model.d_model": [32, 64], "model.n_heads": [2, 4]})
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["run_id", "optim.lr", "seed", "model.d_model", "model.n_heads", "N", "D", "FLOPs",
                                "est_time", "status"]
    runs = sweep.expand(path)
    assert len(lines) == 1 + 12 == 1 + len(runs)
    for line, r in zip(lines[1:], runs, strict=True):
        cells = line.split()
        assert cells[0] == r.run_id and cells[-1] == "pending"
        assert int(cells[5].replace(",", "")) == shapes.count(r.cfg).params_total
        assert int(cells[6].replace(",", "")) == 40 * 16 * 64
    assert not out.exists()

    assert cli.main(["sweep", str(path), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == [r.run_id for r in runs]
    acc = shapes.count(runs[-1].cfg)
    assert rows[-1]["flops"] == 40 * 16 * 64 * acc.flops_per_token and rows[-1]["varied"]["model.d_model"] == 64
    assert sorted(os.listdir(tmp_path)) == ["sweep.yaml", "tiny.yaml"]


@pytest.mark.parametrize("spec, names", [
    ({"grid": {"model.no_such_key": [1, 2]}}, ["model.no_such_key"]),
    ({"grid": {"seed": []}}, ["seed", "empty"]),
    ({"zip": {"model.d_model": [32, 64], "model.n_heads": [2]}}, ["model.d_model", "model.n_heads", "equal"]),
    ({"set": {"optim.lr": 0.01}, "grid": {"optim.lr": [0.1, 0.2]}}, ["optim.lr", "set", "grid"]),
    ({"grid": {"model.d_model": [32]}, "zip": {"model.d_model": [64]}}, ["model.d_model", "zip"]),
    ({"base": "nope.yaml", "grid": {"seed": [0]}}, ["nope.yaml", "not found"]),
    ({"grid": {"model.d_model": [64, 31]}}, ["model.n_heads", "d_model=31"]),  # a bad grid point
    ({"grid": {"optim.lr": {"log2": [-2, -4]}}}, ["optim.lr", "log2"]),
    ({"grids": {"seed": [0]}}, ["grids"]),
])
def test_bad_sweep_exits_2_names_the_key_writes_nothing(tmp_path, capsys, spec, names):
    path = write_sweep(tmp_path, **spec)
    out = tmp_path / "out"
    for extra in (["--out", str(out)], ["--dry-run"]):
        assert cli.main(["sweep", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("testbed sweep: error:"), err
        for name in names:
            assert name in err, (name, err)
    assert not out.exists()


def test_cli_exit_2_and_out_required(tmp_path, cli):
    path = write_sweep(tmp_path, grid={"seed": []})
    r = cli("sweep", str(path), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "grid.seed: empty list" in r.stderr and not (tmp_path / "out").exists()
    r = cli("sweep", str(write_sweep(tmp_path, grid={"seed": [0]})))
    assert r.returncode == 2 and "--out" in r.stderr


def test_worker_env_and_core_split():
    env = layout.worker_env(1, {"XLA_FLAGS": "--xla_dump_to=/x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=/x"
    env = layout.worker_env(2, {"XLA_FLAGS": "--xla_dump_to=/x"})
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/x", *layout.XLA_SHARED_FLAGS]
    assert layout.worker_env(3, env)["XLA_FLAGS"] == env["XLA_FLAGS"]  # not appended twice
    cores = os.sched_getaffinity(0)
    for n in (1, 2, len(cores), len(cores) + 1):
        sets = layout.core_sets(n, sorted(cores))
        assert len(sets) == n and all(s and s <= cores for s in sets)
        if n <= len(cores):
            assert sum(map(len, sets)) == len(set().union(*sets))  # disjoint: each worker has its own cores


def test_sweep_trains_skips_done_and_survives_a_failed_run(tmp_path, cli):
    path = write_sweep(tmp_path, set=TINY, grid={"optim.lr": {"log2": [-8, -7]}})
    out = tmp_path / "out"
    runs = sweep.expand(path)
    assert len(runs) == 2

    r = cli("sweep", str(path), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"completed": 2} and summary["trained"] == 2 and summary["ok"]
    assert sum(line.startswith("[") and "/2] " in line and " completed " in line
               for line in r.stderr.splitlines()) == 2, r.stderr
    for run in runs:  # each progress line names the run by its swept values, not only its hash
        assert f"{run.run_id} (lr={run.cfg.optim.lr:.4g}) completed" in r.stderr, r.stderr
    for run in runs:
        d = out / run.run_id
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "completed" and s["steps"] == 5
        assert C.from_dict(yaml.safe_load((d / "config.yaml").read_text())) == run.cfg
        log = (d / "train.log").read_text()
        assert "completed at step 5" in log and "Unknown flag" not in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"] == {r.run_id: {"name": r.name, "varied": r.varied} for r in runs}
    assert [r.run_id for r in sweep.expand(out / "sweep.yaml")] == [r.run_id for r in runs]  # self-contained

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for run in runs
                for p in (out / run.run_id / "metrics.jsonl", out / run.run_id / "train.log")}

    before = snapshot()
    t0 = time.perf_counter()
    r = cli("sweep", str(path), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 10  # nothing trained: no jax import, no compile
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["trained"] == 0 and summary["skipped"] == 2 and summary["counts"] == {"completed": 2}
    assert snapshot() == before

    # A different sweep into the same directory: one run already done, one that fails fast (a missing text
    # file). The failure does not stop the sweep, the exit code is 1, and the manifest is the union.
    other = write_sweep(tmp_path, name="other.yaml", set={**TINY, "optim.lr": 2.0**-8},
                        zip={"data.source": ["synthetic", "text"], "data.path": [None, str(tmp_path / "none.txt")]})
    r = cli("sweep", str(other), "--out", str(out))
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"completed": 1, "failed": 1} and summary["trained"] == 1 and not summary["ok"]
    failed = [x for x in sweep.expand(other) if x.cfg.data.source == "text"][0]
    assert "does not exist" in (out / failed.run_id / "train.log").read_text()
    assert set(json.loads((out / "manifest.json").read_text())["runs"]) == {*(x.run_id for x in runs),
                                                                            failed.run_id}
    assert snapshot() == before

    rows = sweep.describe(sweep.expand(path), out)
    assert [row["status"] for row in rows] == ["completed", "completed"]
