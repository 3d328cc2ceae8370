"""testbed.analysis.load on small hand-written sweep directories and CSV/parquet tables (no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from testbed.analysis import load as L

from testbed import config as C
from testbed.config import ConfigError

from .conftest import ROOT, SHARED_DATA

EPOCH_CSV = SHARED_DATA / "epoch_chinchilla" / "svg_extracted_data.csv"
LRS = (1e-3, 2e-3, 0.0)  # the LR logged at steps 1, 2, 3


def write_run(sweep, run_id, overrides, summary=None, n_steps=3, eval_steps=(2, 3)):
    """A run directory as testbed writes it: config.yaml, metrics.jsonl (1000 tokens/step), summary.json if given."""
    run = sweep / run_id
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(C.dump_yaml(C.load(ROOT / "configs" / "tiny.yaml", overrides)))
    rows = []
    for step in range(1, n_steps + 1):
        row = {"step": step, "tokens": 1000 * step, "flops": 7e6 * step, "lr": LRS[step - 1],
               "train_loss": 5.0 - step, "grad_norm": 0.5, "sigma_max": {"embed/embedding": 1.0}}
        if step in eval_steps:
            row |= {"eval_loss": 4.5 - step, "eval_loss_se": 0.1}
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def summary(status="completed", eval_loss=1.5, n=1000, n_embed=200, tokens=3000, flops=2.1e7):
    return {"status": status, "steps": 3, "tokens": tokens, "flops": flops, "final_train_loss": 2.0,
            "final_eval_loss": eval_loss, "final_eval_loss_se": 0.1, "data_entropy": 1.2, "params_total": n,
            "params_embedding": n_embed, "params_nonembedding": n - n_embed, "flops_per_token": 7000}


@pytest.fixture
def sweep(tmp_path):
    """Six runs: two good, one diverged, one failed, one unfinished (no summary), one with an infinite loss."""
    s = tmp_path / "sweep"
    write_run(s, "a_d64", ["model.d_model=64"], summary(n=1000))
    write_run(s, "b_d128", ["model.d_model=128", "optim.lr=1e-2", "param.name=mup"], summary(n=4000, eval_loss=1.2))
    write_run(s, "c_div", ["model.d_model=128", "optim.lr=1.0"], summary("diverged", eval_loss="nan", n=4000))
    write_run(s, "d_fail", ["model.d_model=64", "seed=1"], summary("failed", eval_loss=None))
    write_run(s, "e_inc", ["model.d_model=64", "seed=2"], None, n_steps=2)
    write_run(s, "f_inf", ["model.d_model=64", "seed=3"], summary(eval_loss="inf"))
    return s


def write_csv(tmp_path, name="table.csv", **cols):
    path = tmp_path / name
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


# --- sweep directories --------------------------------------------------------------------------------------------
def test_one_row_per_run_with_standard_and_config_columns(sweep):
    df = L.load(sweep)
    assert list(df["run_id"]) == ["a_d64", "b_d128", "c_div", "d_fail", "e_inc", "f_inf"]
    assert list(df.columns[:4]) == ["run_id", "run_dir", "status", "ok"]
    a = df.set_index("run_id").loc["a_d64"]
    assert (a["N"], a["N_nonembed"], a["D"], a["C"]) == (1000, 800, 3000, 2.1e7)
    assert a["C_6ND"] == 6 * 1000 * 3000 and a["loss"] == 1.5 and a["train_loss"] == 2.0
    assert a["loss_se"] == 0.1 and a["data_entropy"] == 1.2 and a["run_dir"] == str(sweep / "a_d64")
    b = df.set_index("run_id").loc["b_d128"]
    assert (b["model.d_model"], b["optim.lr"], b["param.name"], b["seed"]) == (128, 1e-2, "mup", 0)
    assert {"model.n_layers", "optim.schedule", "train.batch_size", "param.perlayer_c.hidden"} <= set(df.columns)
    assert df.attrs == {"source": str(sweep), "derived": [], "metric": "final_eval_loss"}


def test_failed_runs_are_kept_flagged_and_counted(sweep):
    df = L.load(sweep)
    flags = dict(zip(df["run_id"], zip(df["status"], df["ok"], strict=True), strict=True))
    assert flags == {"a_d64": ("completed", True), "b_d128": ("completed", True), "c_div": ("diverged", False),
                     "d_fail": ("failed", False), "e_inc": ("incomplete", False), "f_inf": ("completed", False)}
    rows, excluded = L.usable(df)
    assert list(rows["run_id"]) == ["a_d64", "b_d128"] and rows["ok"].all()
    assert excluded == {"diverged": 1, "failed": 1, "incomplete": 1, "nonfinite_or_nonpositive_loss": 1,
                        "wsd_parent": 0}
    assert tuple(excluded) == L.REASONS and rows.attrs["excluded"] == excluded
    assert L.describe_exclusions(excluded) == ("excluded 4 runs: 1 diverged, 1 failed, 1 incomplete, "
                                               "1 nonfinite or nonpositive loss")
    assert L.describe_exclusions(dict.fromkeys(L.REASONS, 0)) == ""


def test_unfinished_run_reports_how_far_it_got(sweep):
    e = L.load(sweep).set_index("run_id").loc["e_inc"]
    assert (e["D"], e["C"], e["train_loss"], e["steps"]) == (2000, 1.4e7, 3.0, 2)
    assert math.isnan(e["N"]) and math.isnan(e["loss"]) and math.isnan(e["C_6ND"])


def test_metric_choice(sweep):
    df = L.load(sweep, metric="final_train_loss")
    assert df.loc[df["ok"], "run_id"].tolist() == ["a_d64", "b_d128", "f_inf"]  # f_inf's train loss is finite
    assert df.loc[df["ok"], "loss"].tolist() == [2.0] * 3 and df.attrs["metric"] == "final_train_loss"
    with pytest.raises(ConfigError, match="metric final_bogus_loss: no summary.json has it"):
        L.load(sweep, metric="final_bogus_loss")


def test_curves_one_row_per_logged_step(sweep):
    cv = L.curves(sweep)
    assert len(cv) == 5 * 3 + 2  # the unfinished run logged two steps
    a = cv[cv["run_id"] == "a_d64"]
    assert a["step"].tolist() == [1, 2, 3] and a["lr"].tolist() == list(LRS)
    assert a["tokens"].tolist() == [1000, 2000, 3000] and a["flops"].tolist() == [7e6, 1.4e7, 2.1e7]
    assert a["train_loss"].tolist() == [4.0, 3.0, 2.0]
    assert math.isnan(a["eval_loss"].iloc[0]) and a["eval_loss"].iloc[1:].tolist() == [2.5, 1.5]
    assert (a["N"] == 1000).all() and (a["N_nonembed"] == 800).all() and (a["model.d_model"] == 64).all()
    assert cv.groupby("run_id")["status"].first().to_dict()["c_div"] == "diverged"
    assert "sigma_max" not in cv.columns and "grad_norm" not in cv.columns
    assert len(L.curves(sweep, filter="`model.d_model` == 128 and step >= 2")) == 4


def test_filter_on_dotted_names(sweep):
    df = L.load(sweep, filter="`model.d_model` >= 128")
    assert list(df["run_id"]) == ["b_d128", "c_div"] and df.index.tolist() == [0, 1]
    assert df.attrs["source"] == str(sweep)
    assert list(L.load(sweep, filter="ok and `param.name` == 'sp'")["run_id"]) == ["a_d64"]
    for bad in ("`model.d_model` >=", "no_such_column > 1"):
        with pytest.raises(ConfigError, match="--filter .*backticks"):
            L.load(sweep, filter=bad)


# --- files --------------------------------------------------------------------------------------------------------
def test_csv_with_column_mapping_derives_D(tmp_path):
    n = [1e6, 1e7, 1e8, 1e9]
    c = [6e15, 1e17, 3e18, 0.5e20]
    path = write_csv(tmp_path, **{"Model Size": n, "Training FLOP": c, "Final Loss": [4.0, 3.5, 0.0, 2.5],
                                  "note": list("abcd")})
    df = L.load(path, columns=L.parse_columns("N=Model Size, C=Training FLOP,loss=Final Loss"))
    assert np.allclose(df["D"], np.array(c) / (6 * np.array(n))) and np.allclose(df["C_6ND"], c)
    assert df.attrs == {"source": str(path), "derived": ["D = C / (6 N)"]}
    assert "Model Size" not in df.columns and df["note"].tolist() == list("abcd")
    assert df["ok"].tolist() == [True, True, False, True]
    rows, excluded = L.usable(df)
    assert len(rows) == 3 and excluded == {"diverged": 0, "failed": 0, "incomplete": 0,
                                           "nonfinite_or_nonpositive_loss": 1, "wsd_parent": 0}
    gz = tmp_path / "table.csv.gz"
    pd.read_csv(path).to_csv(gz, index=False)
    pd.testing.assert_frame_equal(L.load(gz, columns={"N": "Model Size", "C": "Training FLOP", "loss": "Final Loss"},
                                         filter="N > 1e6"), df.iloc[1:].reset_index(drop=True))


def test_mapped_column_wins_over_a_file_column_of_that_name_and_numbers_map_to_constants(tmp_path):
    """Step Law's CSV has `loss` and `smooth loss`: --columns loss='smooth loss' picks one and keeps the other."""
    path = write_csv(tmp_path, N=[1e6, 2e6], D=[1e9, 2e9], loss=[3.0, 2.9], **{"smooth loss": [2.95, 2.85]},
                     bs=[16, 32])
    df = L.load(path, columns=L.parse_columns("loss=smooth loss,seq_len=2048"))
    assert df["loss"].tolist() == [2.95, 2.85] and df["loss (file)"].tolist() == [3.0, 2.9]
    assert df["seq_len"].tolist() == [2048.0, 2048.0] and "smooth loss" not in df.columns
    with pytest.raises(ConfigError, match="has no column 'twenty'"):
        L.load(path, columns={"seq_len": "twenty"})


def test_csv_with_standard_names_derives_C_and_honours_status(tmp_path):
    path = write_csv(tmp_path, N=[1e6, 2e6], D=[1e9, 2e9], loss=[3.0, 2.0], status=["completed", "diverged"])
    df = L.load(path)
    assert df["C"].tolist() == [6e15, 2.4e16] and df.attrs["derived"] == ["C = 6 N D"]
    assert df["ok"].tolist() == [True, False] and L.usable(df)[1]["diverged"] == 1


def test_parquet_matches_csv(tmp_path):
    pytest.importorskip("pyarrow")
    cols = {"params": [1e6, 1e7], "tokens_seen": [2e7, 2e8], "L": [3.0, 2.5]}
    path = tmp_path / "t.parquet"
    pd.DataFrame(cols).to_parquet(path)
    mapping = {"N": "params", "D": "tokens_seen", "loss": "L"}
    df = L.load(path, columns=mapping)
    assert df["C"].tolist() == [1.2e14, 1.2e16] and df["ok"].all()
    pd.testing.assert_frame_equal(df, L.load(write_csv(tmp_path, **cols), columns=mapping), check_like=True)


def test_curves_file(tmp_path):
    path = write_csv(tmp_path, run=["x", "x", "y"], it=[1, 2, 1], lr=[1e-3, 5e-4, 1e-3], eval_loss=[3.0, None, 4.0])
    cv = L.curves(path, columns={"run_id": "run", "step": "it"})
    assert cv["step"].tolist() == [1, 2, 1] and cv["run_id"].tolist() == ["x", "x", "y"]
    assert math.isnan(cv["eval_loss"].iloc[1])


# --- errors -------------------------------------------------------------------------------------------------------
def test_errors(tmp_path, sweep):
    csv = write_csv(tmp_path, **{"Model Size": [1e6], "Training FLOP": [1e16], "loss": [3.0]})
    cases = [
        (lambda: L.load(tmp_path / "nope"), "does not exist; pass a sweep directory"),
        (lambda: L.load(tmp_path / "empty"), r"no run directories \(config.yaml\) under .*empty; pass a sweep"),
        (lambda: L.load(sweep / "a_d64"), "is a run directory, not a sweep directory: pass its parent"),
        (lambda: L.load(write_csv(tmp_path, "t.txt", a=[1])), "unknown file type; .*csv"),
        (lambda: L.load(csv, columns={"N": "Params"}), "N=Params: table.csv has no column 'Params'; its columns: "
                                                        "Model Size, Training FLOP, loss"),
        (lambda: L.load(csv, columns={"size": "Model Size"}), "--columns size=...: not a standard name; .*N_nonembed"),
        (lambda: L.load(csv, columns={"ok": "loss"}), "--columns ok=...: not a standard name"),
        (lambda: L.load(write_csv(tmp_path, "nl.csv", N=[1.0]), columns={}), "no loss column; pass --columns loss=COL"),
        (lambda: L.load(sweep, columns={"N": "x"}), "--columns applies to CSV/parquet input"),
        (lambda: L.curves(tmp_path / "nope"), "does not exist"),
    ]
    (tmp_path / "empty").mkdir()
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()


def test_parse_columns():
    assert L.parse_columns("N=Model Size,C=Training FLOP,loss=loss") == {"N": "Model Size", "C": "Training FLOP",
                                                                         "loss": "loss"}
    assert L.parse_columns("loss=a=b,") == {"loss": "a=b"} and L.parse_columns(None) == {}
    for bad, message in [("N", "expected STANDARD=FILE_COLUMN"), ("=x", "expected"), ("N=", "expected"),
                         ("N=a,N=b", "N is mapped twice"), ("params=a", "params=...: not a standard name")]:
        with pytest.raises(ConfigError, match=f"--columns.*{message}"):
            L.parse_columns(bad)


@pytest.mark.skipif(not EPOCH_CSV.is_file(), reason=f"{EPOCH_CSV} not present (Epoch AI's Chinchilla extraction)")
def test_epoch_chinchilla_csv():
    df = L.load(EPOCH_CSV, columns={"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    assert len(df) == 245 and df["ok"].all() and df.attrs["derived"] == ["D = C / (6 N)"]
    assert np.allclose(df["D"], df["C"] / (6 * df["N"])) and np.allclose(df["C_6ND"], df["C"])
    assert L.usable(df)[1] == dict.fromkeys(L.REASONS, 0)


def test_a_wsd_parent_is_excluded_as_such_unless_it_did_not_finish():
    df = pd.DataFrame({"run_id": ["p", "q", "c"], "status": ["completed", "diverged", "completed"],
                       "role": ["parent", "parent", "cooldown"], "loss": [3.0, np.nan, 2.9],
                       "ok": [False, False, True]})
    rows, excluded = L.usable(df)
    assert list(rows["run_id"]) == ["c"] and excluded["wsd_parent"] == 1 and excluded["diverged"] == 1
