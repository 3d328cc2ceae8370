"""Switching configs/tiny.yaml to muP gives muP: its companions are implied (with a note) unless set, and a failing
coordinate check names the likely cause."""

from __future__ import annotations

import math

import pytest

from testbed import config as C
from testbed import parametrization
from testbed.diagnostics import coord_check, likely_cause

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"


def load(*overrides: str) -> tuple[C.Config, list[str]]:
    notes: list[str] = []
    return C.load(TINY, list(overrides), notes), notes


def test_mup_on_tiny_implies_its_companions_with_a_note():
    sp, sp_notes = load()
    assert sp_notes == [] and not sp.model.zero_init_readout and sp.optim.grad_clip == 1.0
    cfg, notes = load("param.name=mup")
    assert cfg.model.zero_init_readout and cfg.optim.grad_clip is None
    # tiny.yaml fixes the head count (2), so the head size grows with width: muP's attention is 1/d_head relative
    # to the head size at the base width (default 128 / 2 heads = 64)
    assert cfg.model.head_dim is None and cfg.param.base_head_dim == cfg.param.base_width // 2 == 64
    assert len(notes) == 1 and notes[0].startswith("note: param.name=mup implies ")
    for part in ("model.zero_init_readout=true", "optim.grad_clip=null", "param.base_head_dim=64"):
        assert part in notes[0]
    wide = C.load(TINY, ["param.name=mup", "model.d_model=512"])
    K, K_base = wide.model.resolved_head_dim, wide.param.base_head_dim
    assert math.isclose(parametrization.attn_scale(wide), math.sqrt(K_base) / K)  # 1/d_head, not 1/sqrt(d_head)
    at_base = C.load(TINY, ["param.name=mup", "model.d_model=128"])
    assert math.isclose(parametrization.attn_scale(at_base), 1 / math.sqrt(64))  # SP's value at the base width


def test_explicit_settings_win_and_resolved_configs_imply_nothing():
    cfg, notes = load("param.name=completep", "optim.grad_clip=1.0", "model.zero_init_readout=false",
                      "model.head_dim=16")
    assert cfg.optim.grad_clip == 1.0 and not cfg.model.zero_init_readout and cfg.param.base_head_dim is None
    assert notes == []
    partial, notes = load("param.name=mup", "optim.grad_clip=0.5")
    assert partial.optim.grad_clip == 0.5 and "grad_clip" not in notes[0] and "zero_init_readout" in notes[0]
    again: list[str] = []
    assert C.from_dict(C.to_dict(partial), again) == partial and again == []  # config.yaml reloads as written


def test_cli_prints_the_note(cli):
    r = cli("info", str(TINY), "--set", "param.name=mup")
    assert r.returncode == 0, r.stderr
    assert "note: param.name=mup implies model.zero_init_readout=true" in r.stderr


def test_coordcheck_on_tiny_names_the_cause_and_passes_once_it_is_fixed():
    """tiny.yaml under muP: its heads of size 32 (2 heads at d_model 64) fail on the attention logits; the check
    says so and names model.head_dim; with heads of 16 the same check passes."""
    cfg, _ = load("param.name=mup")
    failed = coord_check(cfg, widths=[64, 128, 256, 512])
    assert not failed["passed"] and failed["worst_ratio_4x"]["module"] == "attn_logits"
    assert "model.head_dim=16" in failed["likely_cause"] and "2 head(s) at d_model 64" in failed["likely_cause"]
    fixed, _ = load("param.name=mup", "model.head_dim=16")
    passed = coord_check(fixed, widths=[64, 128, 256, 512])
    assert passed["passed"] and "likely_cause" not in passed


@pytest.mark.parametrize(("overrides", "module", "ratio", "expect"), [
    (["param.name=mup", "model.zero_init_readout=false", "model.head_dim=16"], "logits", 0.43,
     "set model.zero_init_readout=true"),
    (["param.name=sp"], "attn_out", 16.9, "use param.name=mup"),
    (["param.name=mup", "model.head_dim=16"], "mlp_out", 1.5, "optim.lr_mult.hidden"),
])
def test_likely_cause_names_the_setting(overrides, module, ratio, expect):
    cfg, _ = load(*overrides)
    result = {"axis": "width", "sizes": [64, 128, 256, 512], "worst_ratio_4x": {"module": module, "ratio": ratio}}
    cause = likely_cause(cfg, result)
    assert cause.startswith(f"{module} {'shrinks' if ratio < 1 else 'grows'} with width") and expect in cause


def test_a_sweep_that_varies_the_head_count_holds_the_head_size(tmp_path):
    """Zipping n_heads with d_model (or a transfer design) means heads grow: no fixed-count attention is implied."""
    from testbed.launch import sweep

    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: {TINY}\nset:\n  param.name: mup\n  param.base_width: 32\n"
                    "zip:\n  model.d_model: [32, 256]\n  model.n_heads: [2, 16]\n")
    runs = sweep.expand(spec, log=lambda s: None)
    assert [(r.cfg.model.head_dim, r.cfg.param.base_head_dim) for r in runs] == [(16, None), (16, None)]
    assert len({parametrization.attn_scale(r.cfg) for r in runs}) == 1  # head size 16 everywhere: one scale
    design = tmp_path / "d.yaml"
    design.write_text(f"base: {TINY}\nset:\n  param.name: mup\n  param.base_width: 32\n"
                      "design:\n  type: transfer\n  lr: [0.01]\n  widths: [32, 256]\n  head_dim: 16\n")
    assert [(r.cfg.model.n_heads, r.cfg.param.base_head_dim) for r in sweep.expand(design, log=lambda s: None)] \
        == [(2, None), (16, None)]
