"""testbed.runstore's readers and JSON encoder, testbed.sweepdir's sweep directory (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from testbed.config import ConfigError
from testbed.runstore import RunDir, config_diff, dumps, flatten, jsonable, number
from testbed.sweepdir import SweepDir


def test_one_encoder_writes_nonfinite_as_strings_that_number_reads_back():
    obj = {"a": math.nan, "b": [np.float32(1.5), -math.inf, (1, np.int64(2))], "c": np.array([1.0, np.inf]),
           "d": {"e": np.bool_(True), 64: Path("x/y")}}
    text = dumps(obj)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": "nan", "b": [1.5, "-inf", [1, 2]], "c": [1.0, "inf"], "d": {"e": True, "64": "x/y"}}
    assert jsonable(jsonable(obj)) == jsonable(obj)
    assert math.isnan(number("nan")) and number("-inf") == -math.inf and number("3e-3") == 0.003
    assert all(math.isnan(number(v)) for v in (None, True, "x", [1]))


def test_flatten_and_config_diff():
    assert flatten({"optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "seed": 0}) == {
        "optim.lr": 1e-3, "optim.betas": (0.9, 0.95), "seed": 0}
    assert config_diff({"optim": {"lr": 1, "wd": 0}}, {"optim": {"lr": 2, "wd": 0}}) == "optim.lr: 1 there, 2 here"
    assert config_diff({"a": 1}, {"a": 1}) == ""


def test_run_dir_readers(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    assert not RunDir.is_run(run.path) and not run.has_config and run.read_summary() is None
    (run.path / "config.yaml").write_text("optim:\n  lr: 1.0e-3\n")
    assert RunDir.is_run(run.path) and run.read_config_dict() == {"optim": {"lr": 0.001}}
    run.append_metrics([{"step": 1, "tokens": 10, "flops": 5.0, "train_loss": math.nan},
                        {"step": 2, "tokens": 20, "flops": 10.0, "train_loss": 3.0}])
    assert run.last_metrics()["step"] == 2 and run.read_metrics()[0]["train_loss"] == "nan"
    assert run.summary_or_progress() == {"status": "incomplete", "tokens": 20, "flops": 10.0,
                                         "final_train_loss": 3.0, "steps": 2}
    run.write_summary({"status": "diverged", "final_eval_loss": math.inf})
    assert run.summary_or_progress() == {"status": "diverged", "final_eval_loss": "inf"} and run.status() == "diverged"
    for text, message in (("{", "not valid JSON"), ("[1]", "must hold a mapping")):
        run.summary_path.write_text(text)
        with pytest.raises(ConfigError, match=f"summary.json: {message}.*remove or fix the run"):
            run.read_summary()
    run.config_path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="(?s)config.yaml: not valid YAML .*remove or fix the run"):
        run.read_config_dict()


def test_sweep_dir(tmp_path):
    sweep = SweepDir(tmp_path / "s")
    with pytest.raises(ConfigError, match="does not exist"):
        sweep.runs()
    sweep.path.mkdir()
    with pytest.raises(ConfigError, match=r"no run directories \(config.yaml\) under .*; or else"):
        sweep.runs(fix="or else")
    for rid in ("b", "a"):
        sweep.run(rid).path.mkdir()
        sweep.run(rid).config_path.write_text("seed: 0\n")
    (sweep.path / "notes").mkdir()
    assert [r.path.name for r in sweep.runs()] == ["a", "b"]
    with pytest.raises(ConfigError, match="is a run directory, not a sweep directory: pass its parent"):
        SweepDir(sweep.run("a").path).runs()
    assert sweep.manifest() == {}
    sweep.add_to_manifest([("b", {"name": "seed=1", "varied": {"seed": 1}})])
    sweep.add_to_manifest([("b", {"name": "other", "varied": {}}), ("c", {"name": "seed=2", "varied": {"seed": 2}})])
    assert json.loads(sweep.manifest_path.read_text())["runs"] == {"b": {"name": "seed=1", "varied": {"seed": 1}},
                                                                    "c": {"name": "seed=2", "varied": {"seed": 2}}}
    assert sweep.run_names() == {"b": "seed=1", "c": "seed=2", "a": ""}
