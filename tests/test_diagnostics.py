"""Coordinate checks with power: muP and CompleteP pass across width, SP fails; CompleteP and depth-muP pass
across depth, muP alone fails. Plus the power-iteration singular values against numpy's SVD."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from testbed import config as C
from testbed.diagnostics import coord_check, reshape
from testbed.model import init_params
from testbed.spectral import SingularValues, by_name

from .conftest import ROOT

BASE = ["model.d_model=64", "model.head_dim=16", "model.n_heads=4", "param.base_width=64", "model.n_layers=2",
        "param.base_depth=2", "model.zero_init_readout=true", "optim.lr=3e-3", "train.steps=10"]


def check(name, **kw):
    """configs/mup.yaml itself (the example these checks are documented on), under parametrization `name`."""
    cfg = C.load(ROOT / "configs" / "mup.yaml", [f"param.name={name}", *kw.pop("extra", [])])
    return coord_check(cfg, steps=4, seeds=2, **kw)


@pytest.mark.parametrize("name", ["mup", "completep"])
def test_width_coordcheck_passes_for_mup_family(name):
    r = check(name, widths=[64, 128, 256])
    assert r["passed"], r["worst_ratio_4x"]
    assert set(r["modules"]) == {"embedding", "attn_logits", "attn_out", "mlp_out", "residual", "logits"}
    for mod in r["modules"].values():
        assert all(abs(s) < 0.15 for s in mod["slope"][1:]), mod["slope"]


def test_width_coordcheck_fails_for_sp():
    r = check("sp", widths=[64, 128, 256])
    assert not r["passed"]
    assert r["worst_ratio_4x"]["ratio"] > 2.0  # SP's activations grow with width: the check has power
    assert r["modules"]["mlp_out"]["slope"][-1] > 0.5


def test_depth_coordcheck_passes_with_residual_scaling_and_fails_for_mup():
    extra = ["model.emb_std=1.0"]  # O(1) embeddings (width-constant, so still muP): the stream's base scale
    results = {name: check(name, depths=[2, 4, 8], extra=extra) for name in ("depth_mup", "completep", "mup")}
    assert results["depth_mup"]["passed"] and results["completep"]["passed"]
    assert not results["mup"]["passed"]
    assert results["mup"]["worst_ratio_4x"]["ratio"] > 1.2
    assert results["completep"]["modules"]["residual"]["checked"]
    assert not results["completep"]["modules"]["logits"]["checked"]  # depth check judges the residual stream


def test_coordcheck_rejects_sizes_without_a_4x_pair():
    with pytest.raises(C.ConfigError, match="4x"):
        check("mup", widths=[64, 128])


def test_reshape_keeps_head_size_and_ffn_ratio():
    cfg = reshape(C.load(None, BASE), width=256)
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.resolved_head_dim, cfg.model.resolved_d_ff) == \
        (256, 16, 16, 1024)
    assert reshape(cfg, depth=8).model.n_layers == 8


def test_singular_values_match_numpy_svd():
    cfg = C.load(None, BASE)
    params = init_params(cfg, jax.random.key(0))
    sv = SingularValues(params)
    got = sv(params)
    assert "block_0/attn/qkv/kernel" in got and got["readout/kernel"] == 0.0  # zero-init readout
    flat = by_name(params)
    for name, value in got.items():
        ref = np.linalg.svd(np.asarray(flat[name]), compute_uv=False)[0]
        assert value == pytest.approx(ref, rel=1e-2), name  # random matrices: small spectral gap
    params2 = jax.tree.map(lambda x: x * 1.5, params)
    params2["readout"]["kernel"] = jax.random.normal(jax.random.key(1), params2["readout"]["kernel"].shape)
    flat2 = by_name(params2)
    again = sv(params2)
    for name, value in again.items():
        ref = np.linalg.svd(np.asarray(flat2[name]), compute_uv=False)[0]
        assert value == pytest.approx(ref, rel=1e-2), name  # random matrices: small spectral gap


def test_cli_coordcheck_json_and_plot(cli, tmp_path):
    out = tmp_path / "cc.png"
    r = cli("coordcheck", "configs/tiny.yaml", "--param", "mup", "--widths", "32,64,128", "--steps", "3",
            "--seeds", "1", "--set", "param.base_width=32", "--set", "model.head_dim=16", "--json", "--plot", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["axis"] == "width" and result["sizes"] == [32, 64, 128] and "passed" in result
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    bad = cli("coordcheck", "configs/tiny.yaml", "--widths", "32,64")
    assert bad.returncode == 2 and "4x" in bad.stderr
