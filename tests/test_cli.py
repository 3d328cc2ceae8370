from __future__ import annotations

import json

from .conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")


def test_info_json_counts(cli):
    r = cli("info", TINY, "--set", "model.d_model=128", "--set", "model.n_heads=4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["params_total"] == d["params_embedding"] + d["params_nonembedding"]
    assert d["params_embedding"] == 256 * 128
    assert d["flops_per_token_6n"] == 6 * d["params_nonembedding"]
    assert d["flops_per_token"] > d["flops_per_token_6n"] * 0.5
    assert d["total_bytes"] > 16 * d["params_total"]


def test_bench_json(cli):
    r = cli("bench", TINY, "--steps", "2", "--set", "model.d_model=32", "--set", "data.seq_len=32", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    for k in ("tokens_per_s", "step_s", "compile_s", "flops_per_token", "mfu", "peak_flops"):
        assert d[k] > 0, k
    assert d["mfu"] <= 1.0  # achieved FLOP/s over the matmul peak measured in the same run
    assert d["machine"]["cpu"] and d["machine"]["cores"] >= 1  # every benchmark names its machine


def test_bad_input_exits_2_and_writes_nothing(cli, tmp_path):
    cases = [
        (["--set", "model.no_such_key=1"], "model.no_such_key"),
        (["--set", "model.d_model=100", "--set", "model.n_heads=3"], "model.n_heads"),
        (["--set", "optim.lr=fast"], "optim.lr"),
        (["--set", "train.batch_size=-4"], "train.batch_size"),
        (["--set", "noequals"], "--set"),
    ]
    for extra, key in cases:
        out = tmp_path / "run"
        r = cli("train", TINY, "--out", str(out), *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert key in r.stderr, (key, r.stderr)
        assert not out.exists()
    r = cli("train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "does not exist" in r.stderr
