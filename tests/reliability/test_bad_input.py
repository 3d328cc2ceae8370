"""The bad-input table: malformed configs, sweep files, run directories and tables through `testbed train`, `testbed
sweep` and `testbed fit`. Each must exit 2 with one message naming the problem and the fix (`testbed CMD: error:
...`, no traceback), and write or overwrite nothing (a snapshot of the working directory, mtimes and bytes, before
and after; fits are given `--plot` so a figure written anyway would show).

The table runs in-process through testbed.launch.cli.main (the exit code main returns is the process's:
`sys.exit(main())`); two rows also run as real subprocesses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from testbed.launch import cli as CLI
from testbed.launch import sweep as SW

from testbed import config as C

from ..conftest import ROOT
from ..conftest import testbed_cmd as run_cli
from ..test_load import summary as fake_summary
from ..test_load import write_run
from .common import snapshot

TINY = ROOT / "configs" / "tiny.yaml"
N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 5)))
LOSS = 1.8 + 400 / N ** 0.34 + 2000 / D ** 0.37


def _file(name, text):
    def make(tmp):
        (tmp / name).write_text(text)
        return name
    return make


def _yaml(name, data):
    return _file(name, yaml.safe_dump(data, sort_keys=False))


def _csv(name, **cols):
    def make(tmp):
        pd.DataFrame(cols).to_csv(tmp / name, index=False)
        return name
    return make


def _sweep(name, **spec):
    def make(tmp):
        shutil.copy(TINY, tmp / "tiny.yaml")
        (tmp / name).write_text(yaml.safe_dump({"base": "tiny.yaml", **spec}, sort_keys=False))
        return name
    return make


def _run_dir_of_other_config(tmp):
    """A finished run directory (config, metrics, summary) trained with optim.lr=0.1: the user points --out at it
    with another config."""
    write_run(tmp, "run", ["optim.lr=0.1"], fake_summary())
    return "run"


def _run_dir_with_garbage_config(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text("model: [unclosed\n")
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    return "run"


def _sweep_dir_with_a_tampered_run(tmp):
    """A sweep directory whose run directory (named by the run's config hash) holds another config."""
    name = _sweep("s.yaml", grid={"seed": [0, 1]})(tmp)
    rid = SW.expand(tmp / name, log=lambda _: None)[0].run_id
    (tmp / "out" / rid).mkdir(parents=True)
    (tmp / "out" / rid / "config.yaml").write_text(C.dump_yaml(C.load(TINY, ["optim.lr=0.5"])))
    return name


def _a_file(tmp):
    (tmp / "afile").write_text("not a directory\n")
    return "afile"


def _sweep_dir_of_runs(tmp):
    write_run(tmp / "sweep", "r0", ["seed=0"], fake_summary())
    return "sweep"


# (id, command, setup -> the argument it makes, extra args, substrings of the error: the problem and the fix)
T = "train"
CASES = [
    # --- testbed train: configs -----------------------------------------------------------------------------
    ("config-unknown-key", T, _file("c.yaml", "model:\n  d_modle: 64\n"), [],
     ["unknown key 'model.d_modle'", "valid keys under 'model' are", "d_model"]),
    ("override-unknown-key", T, lambda t: str(TINY), ["--set", "optim.learning_rate=1e-3"],
     ["unknown key 'optim.learning_rate'", "valid keys under 'optim'", "lr"]),
    ("config-wrong-type", T, _file("c.yaml", "train:\n  steps: many\n"), [],
     ["train.steps", "expected an integer", "'many'"]),
    ("override-wrong-type", T, lambda t: str(TINY), ["--set", "model.qk_norm=maybe"],
     ["model.qk_norm", "expected true or false"]),
    ("section-not-a-mapping", T, _file("c.yaml", "model: 5\n"), [], ["model", "expected a section (mapping)"]),
    ("config-not-a-mapping", T, _file("c.yaml", "- 1\n- 2\n"), [], ["must be a mapping of sections"]),
    ("config-invalid-yaml", T, _file("c.yaml", "model: {d_model: 64\n"), [], ["c.yaml", "is not valid YAML"]),
    ("config-missing", T, lambda t: "nope.yaml", [], ["'nope.yaml' does not exist", "configs/tiny.yaml"]),
    ("heads-do-not-divide-width", T, lambda t: str(TINY), ["--set", "model.d_model=96", "--set", "model.n_heads=5"],
     ["model.n_heads", "d_model=96 is not divisible by n_heads=5", "pick n_heads dividing d_model"]),
    ("odd-rope-head-dim", T, lambda t: str(TINY), ["--set", "model.head_dim=7"],
     ["model.head_dim", "RoPE needs an even head dim"]),
    ("negative-lr", T, lambda t: str(TINY), ["--set", "optim.lr=-3e-3"], ["optim.lr", "must be positive", "-0.003"]),
    ("zero-steps", T, lambda t: str(TINY), ["--set", "train.steps=0"], ["train.steps", "must be positive"]),
    ("warmup-longer-than-run", T, lambda t: str(TINY), ["--set", "optim.warmup_steps=1000"],
     ["optim.warmup_steps", "1000 exceeds the run's 300 steps"]),
    ("grad-accum-does-not-divide-batch", T, lambda t: str(TINY), ["--set", "train.grad_accum=3"],
     ["train.grad_accum", "batch_size=16 is not divisible by grad_accum=3"]),
    ("override-without-equals", T, lambda t: str(TINY), ["--set", "optim.lr"],
     ["--set 'optim.lr'", "expected section.key=value"]),
    # --- testbed train: run directories ---------------------------------------------------------------------
    ("run-dir-of-another-config", T, lambda t: str(TINY), ["--out", "@run"],
     ["holds a different config", "optim.lr: 0.1 there, 0.003 here", "pass a new --out, or the same config"]),
    ("run-dir-with-unreadable-config", T, lambda t: str(TINY), ["--out", "@garbage"],
     ["config.yaml: cannot be read as a testbed config", "pass a new --out"]),
    ("out-is-a-file", T, lambda t: str(TINY), ["--out", "@afile"], ["--out afile: exists and is not a directory"]),
    # --- testbed sweep --------------------------------------------------------------------------------------
    ("sweep-empty-axis", "sweep", _sweep("s.yaml", grid={"optim.lr": []}), ["--out", "out"],
     ["grid.optim.lr: empty list", "give at least one value"]),
    ("sweep-empty-log2-range", "sweep", _sweep("s.yaml", grid={"optim.lr": {"log2": [-2, -4]}}), ["--out", "out"],
     ["optim.lr: log2 [-2, -4, 1] is empty", "stop >= start"]),
    ("sweep-key-in-set-and-grid", "sweep", _sweep("s.yaml", set={"seed": 1}, grid={"seed": [0, 1]}), ["--out", "out"],
     ["key 'seed' is in both set and grid", "only one of set, grid, zip"]),
    ("sweep-zip-lengths-differ", "sweep", _sweep("s.yaml", zip={"model.d_model": [32, 64], "model.n_heads": [2]}),
     ["--out", "out"], ["zip lists must have equal lengths", "model.n_heads has 1", "use grid: for a product"]),
    ("sweep-unknown-config-key", "sweep", _sweep("s.yaml", grid={"optim.lr_max": [1, 2]}), ["--out", "out"],
     ["unknown key 'optim.lr_max'", "valid keys under 'optim'"]),
    ("sweep-wrong-type", "sweep", _sweep("s.yaml", grid={"model.d_model": [32, "wide"]}), ["--out", "out"],
     ["(run d_model=wide)", "model.d_model: expected an integer"]),
    ("sweep-unknown-top-level-key", "sweep", _sweep("s.yaml", grids={"seed": [0]}), ["--out", "out"],
     ["unknown top-level key 'grids'", "config keys go under set:, grid: or zip:"]),
    ("sweep-dir-holds-another-config", "sweep", _sweep_dir_with_a_tampered_run, ["--out", "out"],
     ["holds a different config", "optim.lr: 0.5 there, 0.003 here"]),
    ("sweep-zero-workers", "sweep", _sweep("s.yaml", grid={"seed": [0]}), ["--out", "out", "--workers", "0"],
     ["--workers: must be >= 1"]),
    # --- testbed fit ----------------------------------------------------------------------------------------
    ("csv-missing-loss-column", "fit", _csv("t.csv", N=N, D=D, final=LOSS), [],
     ["t.csv has no loss column", "pass --columns loss=COL", "its columns: N, D, final"]),
    ("csv-missing-N-column", "fit", _csv("t.csv", D=D, loss=LOSS), [],
     ["the data has no N column", "--columns N=COLUMN"]),
    ("csv-mapped-column-absent", "fit", _csv("t.csv", N=N, D=D, loss=LOSS), ["--columns", "N=Params"],
     ["--columns N=Params: t.csv has no column 'Params'", "its columns: N, D, loss"]),
    ("csv-NaN-in-N", "fit", _csv("t.csv", N=np.where(np.arange(25) == 3, np.nan, N), D=D, loss=LOSS), [],
     ["column N has non-finite or non-positive values", "check --columns, or --filter them out"]),
    ("csv-all-losses-NaN", "fit", _csv("t.csv", N=N, D=D, loss=np.full(25, np.nan)), [],
     ["0 usable points", "excluded 25 runs: 25 nonfinite or nonpositive loss"]),
    ("csv-zero-losses", "fit", _csv("t.csv", N=N, D=D, loss=np.zeros(25)), [],
     ["0 usable points", "25 nonfinite or nonpositive loss"]),
    ("csv-negative-losses", "fit", _csv("t.csv", N=N, D=D, loss=-LOSS), [],
     ["0 usable points", "25 nonfinite or nonpositive loss"]),
    ("csv-non-numeric-losses", "fit", _csv("t.csv", N=N, D=D, loss=["low"] * 25), [],
     ["0 usable points", "25 nonfinite or nonpositive loss"]),
    ("csv-empty-file", "fit", _file("t.csv", ""), [], ["t.csv: cannot be read as a table"]),
    ("not-a-table", "fit", _file("t.txt", "N,D,loss\n"), [], ["unknown file type", ".csv"]),
    ("fit-a-run-directory", "fit", lambda t: _sweep_dir_of_runs(t) + "/r0", [],
     ["is a run directory, not a sweep directory: pass its parent"]),
    ("unknown-law", "fit", _csv("t.csv", N=N, D=D, loss=LOSS), ["@law=chinchila"],
     ["LAW: unknown 'chinchila'", "choose one of", "chinchilla"]),
    ("holdout-selects-everything", "fit", _csv("t.csv", N=N, D=D, loss=LOSS), ["--holdout", "N > 0"],
     ["--holdout 'N > 0': selects 25 of 25 points", "must leave some to fit"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_problem_and_the_fix_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    name, cmd, setup, extra, needles = case
    monkeypatch.chdir(tmp_path)
    specials = {"@run": _run_dir_of_other_config, "@garbage": _run_dir_with_garbage_config, "@afile": _a_file}
    extra = [specials[x](tmp_path) if x in specials else x for x in extra]
    arg = setup(tmp_path)
    law = next((x.split("=", 1)[1] for x in extra if x.startswith("@law=")), "chinchilla")
    extra = [x for x in extra if not x.startswith("@law=")]
    argv = {"train": ["train", arg, *extra],
            "sweep": ["sweep", arg, *extra],
            "fit": ["fit", law, arg, *extra, "--plot", "fig.png"]}[cmd]
    before = snapshot(tmp_path)
    rc = CLI.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (name, err)
    assert err.startswith(f"testbed {cmd}: error: ") and err.count("\n") <= 8 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (name, needle, err)
    assert snapshot(tmp_path) == before, f"{name}: something was written"


def test_the_table_covers_every_kind_of_bad_input():
    ids = {c[0] for c in CASES}
    assert len(CASES) >= 40  # docs/reliability.md states 40 rows
    for must in ("config-unknown-key", "config-wrong-type", "heads-do-not-divide-width", "negative-lr",
                 "sweep-empty-axis", "sweep-key-in-set-and-grid", "csv-missing-loss-column", "csv-NaN-in-N",
                 "csv-negative-losses", "csv-zero-losses", "run-dir-of-another-config"):
        assert must in ids


@pytest.mark.parametrize("name", ["run-dir-of-another-config", "csv-all-losses-NaN"])
def test_as_a_real_process(name, tmp_path):
    """Two rows through `python -m testbed.launch.cli`: the process's exit status is 2 and stderr holds the one line."""
    case = next(c for c in CASES if c[0] == name)
    _, cmd, setup, extra, needles = case
    extra = [_run_dir_of_other_config(tmp_path) if x == "@run" else x for x in extra]
    arg = setup(tmp_path)
    argv = ["train", arg, *extra] if cmd == "train" else ["fit", "chinchilla", arg, "--plot", "fig.png"]
    before = snapshot(tmp_path)
    r = run_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"testbed {cmd}: error: ") and "Traceback" not in r.stderr
    assert all(n in r.stderr for n in needles), r.stderr
    assert snapshot(tmp_path) == before
    assert json.dumps(r.stdout) == '""'  # nothing on stdout either: no half result to parse
