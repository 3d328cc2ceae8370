from __future__ import annotations

import pytest

from testbed import config as C


def test_defaults_validate_and_overrides_apply(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  d_model: 96\n  n_heads: 3\ntrain:\n  steps: 10\n")
    cfg = C.load(p, ["optim.lr=1e-3", "model.mlp=swiglu", "train.batch_size=8", "optim.lr_mult.hidden=0.5"])
    assert cfg.model.d_model == 96 and cfg.model.resolved_head_dim == 32
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.model.mlp == "swiglu" and cfg.train.batch_size == 8
    assert cfg.optim.lr_mult == {"hidden": 0.5}
    assert cfg.model.resolved_d_ff == 4 * 96


def test_token_budget_sets_steps():
    cfg = C.from_dict({"train": {"tokens": 10_000, "batch_size": 4}, "data": {"seq_len": 100}})
    assert cfg.total_steps == 25  # ceil(10000 / 400)


def test_yaml_roundtrip():
    cfg = C.from_dict({"train": {"steps": 3}, "model": {"qk_norm": True}})
    import yaml

    assert C.from_dict(yaml.safe_load(C.dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("overrides, key", [
    (["model.no_such_key=1"], "model.no_such_key"),
    (["nosection.x=1"], "nosection"),
    (["model.d_model=abc"], "model.d_model"),
    (["model.d_model=100", "model.n_heads=3"], "model.n_heads"),
    (["optim.lr=-1"], "optim.lr"),
    (["model.norm=batchnorm"], "model.norm"),
    (["train.steps=null"], "train.steps"),
    (["train.batch_size=10", "train.grad_accum=3"], "train.grad_accum"),
    (["model.qk_norm=3"], "model.qk_norm"),
    (["optim.lr_mult.bogus=2"], "optim.lr_mult.bogus"),
    (["data.source=text"], "data.path"),
    (["optim.beta2=1.5"], "optim.beta2"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, ["train.steps=10", *overrides])
    assert key in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load(bad)
