"""The parametrization table: exact SP equivalence at the base shape, width scaling of inits, and the optimizer
applying the table leaf by leaf (effective LR, decay and eps measured from one optimizer step)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from testbed import config as C
from testbed import parametrization as P
from testbed.model import Transformer, init_params, param_info
from testbed.optim import group_table, make_optimizer

NAMES = list(P.PARAMETRIZATIONS)
# The same base constants and init choices for every parametrization (alpha's, sigma_base, zero-init flags).
CONSTANTS = ["param.alpha_in=0.7", "param.alpha_out=1.3", "param.alpha_attn=0.9", "model.init_std=0.05",
             "model.emb_std=0.3", "optim.eps_rule=scaled", "optim.weight_decay=0.1"]


def cfg_of(*overrides):
    """The table alone: muP's companion settings are given explicitly, so none is implied (testbed.companions)."""
    return C.load(None, ["train.steps=20", "data.seq_len=16", "model.n_heads=2", "optim.schedule=constant",
                         "optim.grad_clip=null", "model.zero_init_readout=false", "param.base_head_dim=null",
                         *overrides])


def leaves_with_paths(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("variant", [
    [], ["model.zero_init_readout=true", "model.zero_init_query=true"],
    ["model.tie_embeddings=true", "model.pos=learned", "model.mlp=swiglu", "model.qk_norm=true"],
    ["optim.wd_rule=sqrt", "model.use_bias=true", "model.norm=layernorm"], ["optim.wd_rule=constant_tau"],
])
def test_every_parametrization_is_sp_bitwise_at_the_base_shape(variant):
    """m = m_L = 1: init, forward output and per-group LR, WD and eps are exactly SP's."""
    base = ["model.d_model=64", "param.base_width=64", "model.n_layers=3", "param.base_depth=3", *CONSTANTS,
            *variant]
    ref_cfg = cfg_of(*base, "param.name=sp")
    ref = init_params(ref_cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 256, (2, 16)).astype(np.int32)
    ref_out = np.asarray(Transformer(ref_cfg).apply({"params": ref}, tokens))
    ref_groups = {i: P.role_scale(ref_cfg, i) for i in set(jax.tree.leaves(param_info(ref)))}
    for name in NAMES[1:]:
        cfg = cfg_of(*base, f"param.name={name}")
        params = init_params(cfg, jax.random.key(0))
        for (path, a), b in zip(leaves_with_paths(params).items(), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: init of {path}")
        np.testing.assert_array_equal(np.asarray(Transformer(cfg).apply({"params": params}, tokens)), ref_out,
                                      err_msg=f"{name}: forward output")
        for info, ref_scale in ref_groups.items():
            assert P.role_scale(cfg, info) == ref_scale, (name, info)
        assert P.attn_scale(cfg) == P.attn_scale(ref_cfg) and P.residual_mult(cfg) == 1.0


@pytest.mark.parametrize("name", ["mup", "completep"])
def test_hidden_init_std_times_sqrt_m_and_embedding_std_are_width_constant(name):
    stds = {}
    for width in (64, 128, 256, 512):
        cfg = cfg_of(f"param.name={name}", f"model.d_model={width}", f"model.n_heads={width // 32}",
                     "param.base_width=64", "model.init_std=0.04", "model.emb_std=0.5", "model.vocab_size=512")
        p = init_params(cfg, jax.random.key(1))
        m = width / 64
        stds[width] = {"up": float(np.std(p["block_0"]["mlp"]["up"]["kernel"])) * math.sqrt(m),
                       "down": float(np.std(p["block_0"]["mlp"]["down"]["kernel"])) * math.sqrt(m),
                       "qkv": float(np.std(p["block_1"]["attn"]["qkv"]["kernel"])) * math.sqrt(m),
                       "embed": float(np.std(p["embed"]["embedding"])),
                       "readout": float(np.std(p["readout"]["kernel"]))}
    for width, s in stds.items():
        for key in ("up", "down", "qkv"):
            assert s[key] == pytest.approx(0.04, rel=0.03), (width, key, s)
        assert s["embed"] == pytest.approx(0.5, rel=0.03), (width, s)
        assert s["readout"] == pytest.approx(0.04, rel=0.03), (width, s)  # muP readout: init width-constant


def test_sp_hidden_init_is_width_constant_unless_fan_in():
    for width in (64, 256):
        p = init_params(cfg_of(f"model.d_model={width}", "param.base_width=64", "model.init_std=0.04"),
                        jax.random.key(1))
        assert float(np.std(p["block_0"]["mlp"]["up"]["kernel"])) == pytest.approx(0.04, rel=0.03)
    p = init_params(cfg_of("model.d_model=256", "param.base_width=64", "model.init_std=0.04", "param.sp_init=fan_in"),
                    jax.random.key(1))
    assert float(np.std(p["block_0"]["mlp"]["up"]["kernel"])) == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize("tied", [False, True])
def test_mup_forward_divides_logits_by_m_and_scales_attention_by_head_dim(tied):
    """Same params through SP and muP: logits differ by exactly alpha_out / m (readout multiplier)."""
    over = ["model.d_model=128", "param.base_width=32", f"model.tie_embeddings={str(tied).lower()}",
            "model.n_heads=8"]
    sp, mup = cfg_of(*over), cfg_of(*over, "param.name=mup")
    params = init_params(sp, jax.random.key(2))
    tokens = np.random.default_rng(1).integers(0, 256, (2, 16)).astype(np.int32)
    with jax.default_matmul_precision("highest"):
        a = Transformer(sp).apply({"params": params}, tokens)
        b = Transformer(mup).apply({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a) / 4, rtol=2e-5, atol=1e-7)
    assert P.attn_scale(mup) == pytest.approx(1 / math.sqrt(16))  # head_dim = base head dim: SP's value
    wide_heads = cfg_of("model.d_model=128", "param.base_width=32", "model.n_heads=2", "param.name=mup",
                        "param.base_head_dim=16", "param.alpha_attn=2.0")
    assert P.attn_scale(wide_heads) == pytest.approx(2.0 * math.sqrt(16) / 64)  # alpha_attn * sqrt(d_base) / d_head


def test_residual_multiplier_follows_depth_alpha():
    for name, alpha in [("sp", 0), ("mup", 0), ("depth_mup", 0.5), ("completep", 1.0)]:
        cfg = cfg_of(f"param.name={name}", "model.n_layers=8", "param.base_depth=2")
        assert P.residual_mult(cfg) == pytest.approx(4.0 ** -alpha)


# --- one optimizer step, leaf by leaf -----------------------------------------------------------------------


def _step(cfg, params, grads):
    tx = make_optimizer(cfg, param_info(params))
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def measured(cfg, params):
    """Each leaf's effective LR, per-step decay and eps, read off single optimizer steps (no schedule, no clip).

    LR: theta = 0, g = 1 -> u = -lr/(1 + eps).  Decay: theta = 1, g = 0 -> u = -lr * lambda.
    eps: theta = 0, g = c -> u = -lr * c / (c + eps), so eps = c * (lr / |u| - 1).
    """
    zeros, ones = jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.ones_like, params)
    c = cfg.optim.eps
    lr = jax.tree.map(lambda u: -u.ravel()[0], _step(cfg, zeros, ones))
    decay = jax.tree.map(lambda u: -u.ravel()[0], _step(cfg, ones, zeros))
    small = _step(cfg, zeros, jax.tree.map(lambda x: jnp.full_like(x, c), params))
    eps = jax.tree.map(lambda u, l: c * (l / -u.ravel()[0] - 1), small, lr)
    return leaves_with_paths(lr), leaves_with_paths(decay), leaves_with_paths(eps)


CASES = {  # (name, width mult m, depth mult m_L, wd_rule)
    "mup_none": ("mup", 4, 2, "none"), "completep_constant_tau": ("completep", 4, 2, "constant_tau"),
    "depth_mup_sqrt": ("depth_mup", 2, 4, "sqrt"), "sp_perlayer_timescale": ("sp_perlayer", 4, 1, "timescale"),
    "sp_constant_tau": ("sp", 4, 2, "constant_tau"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unit_gradient_step_matches_the_table_leaf_by_leaf(case):
    name, m, mL, rule = CASES[case]
    wd = ["optim.tau_frac=0.25"] if rule == "timescale" else ["optim.weight_decay=0.1"]
    cfg = cfg_of(f"param.name={name}", f"model.d_model={32 * m}", "param.base_width=32",
                 f"model.n_layers={2 * mL}", "param.base_depth=2", "optim.lr=0.01", "optim.eps=1e-6",
                 "optim.eps_rule=scaled", f"optim.wd_rule={rule}", "optim.lr_mult.readout=0.5",
                 "model.use_bias=true", *wd)
    params = init_params(cfg, jax.random.key(0))
    lr, decay, eps = measured(cfg, params)
    table = group_table(cfg, param_info(params), params)
    labels = leaves_with_paths(jax.tree.map(lambda i: i.group, param_info(params)))
    for path, label in labels.items():
        row = table[label]
        assert float(lr[path]) == pytest.approx(row["lr"], rel=1e-5), (path, label)
        assert float(decay[path]) == pytest.approx(row["lr"] * row["weight_decay"], rel=1e-4, abs=1e-12), (path,)
        assert float(eps[path]) == pytest.approx(row["eps"], rel=1e-3), (path, label)


def test_table_values_by_hand_for_completep_and_depth_mup():
    """The formulas of REFERENCE.md section 1, written out, at m = 4 and m_L = 4."""
    def table(name, rule="constant_tau"):
        cfg = cfg_of(f"param.name={name}", "model.d_model=128", "param.base_width=32", "model.n_layers=8",
                     "param.base_depth=2", "optim.lr=0.01", "optim.eps=1e-8", "optim.eps_rule=scaled",
                     "optim.weight_decay=0.1", f"optim.wd_rule={rule}", "model.norm=layernorm",
                     "model.use_bias=true")
        return group_table(cfg, param_info(p := init_params(cfg, jax.random.key(0))), p)

    m, mL, eta, eps, lam = 4, 4, 0.01, 1e-8, 0.1
    for name, a in [("completep", 1.0), ("depth_mup", 0.5)]:
        t = table(name)
        hidden, block_vec, top_vec = t["hidden:128"], t["vector:1:block"], t["vector:1"]
        assert hidden["lr"] == pytest.approx(eta / m * mL ** (a - 1))
        assert hidden["eps"] == pytest.approx(eps / m * mL ** -a)
        assert hidden["weight_decay"] == pytest.approx(lam * m * mL ** (1 - a))  # eta_g * lambda_g constant
        assert hidden["tau_iter"] == pytest.approx(1 / (eta * lam))
        assert block_vec["lr"] == pytest.approx(eta * mL ** (a - 1)) and block_vec["weight_decay"] == 0
        assert block_vec["eps"] == pytest.approx(eps * mL ** -a)
        assert top_vec["lr"] == pytest.approx(eta) and top_vec["eps"] == pytest.approx(eps)
        assert t["embedding:1"]["lr"] == pytest.approx(eta) and t["readout:128"]["lr"] == pytest.approx(eta)
        assert t["readout:128"]["init_std"] == pytest.approx(0.02) and hidden["init_std"] == pytest.approx(0.01)
    sqrt = table("mup", "sqrt")
    assert sqrt["hidden:128"]["weight_decay"] == pytest.approx(lam * 2) and sqrt["hidden:512"]["lr"] == \
        pytest.approx(eta / 4)
    assert sqrt["embedding:1"]["weight_decay"] == pytest.approx(lam)


def test_timescale_rule_gives_every_decayed_group_the_same_tau():
    cfg = cfg_of("param.name=mup", "model.d_model=128", "param.base_width=32", "optim.wd_rule=timescale",
                 "optim.tau_frac=0.25", "train.steps=400", "optim.lr_mult.embedding=3.0")
    t = group_table(cfg, param_info(p := init_params(cfg, jax.random.key(0))), p)
    taus = {k: v["tau_iter"] for k, v in t.items()}
    assert all(v == pytest.approx(100.0) for k, v in taus.items() if not k.startswith("vector")), taus
    assert all(v is None for k, v in taus.items() if k.startswith("vector"))
    with pytest.raises(C.ConfigError, match="optim.tau_frac"):
        cfg_of("optim.wd_rule=timescale")


def test_sp_perlayer_exponents_are_configurable():
    cfg = cfg_of("param.name=sp_perlayer", "model.d_model=128", "param.base_width=32",
                 "param.perlayer_c.hidden=0.5", "param.perlayer_c.readout=0.5", "optim.lr_mult.hidden=2.0")
    t = group_table(cfg, param_info(p := init_params(cfg, jax.random.key(0))), p)
    assert t["hidden:128"]["lr"] == pytest.approx(3e-3 * 2.0 * 4 ** -0.5)  # gamma_g * m^-c_g
    assert t["readout:128"]["lr"] == pytest.approx(3e-3 * 0.5)
    assert t["embedding:1"]["lr"] == pytest.approx(3e-3)
    with pytest.raises(C.ConfigError, match="param.perlayer_c.attn"):
        cfg_of("param.perlayer_c.attn=1.0")


def test_adam_atan2_is_scale_invariant_and_eps_free():
    cfg = cfg_of("param.name=mup", "model.d_model=64", "param.base_width=32", "optim.eps_rule=atan2",
                 "optim.lr=0.01")
    params = init_params(cfg, jax.random.key(0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    big = _step(cfg, zeros, jax.tree.map(jnp.ones_like, params))
    tiny = _step(cfg, zeros, jax.tree.map(lambda x: jnp.full_like(x, 1e-12), params))  # far below eps=1e-8
    table = group_table(cfg, param_info(params), params)
    for (path, u), v, info in zip(leaves_with_paths(big).items(), jax.tree.leaves(tiny),
                                  jax.tree.leaves(param_info(params)), strict=True):
        label = info.group
        np.testing.assert_allclose(u, v, rtol=1e-6, err_msg=path)  # a * atan2(c, |c|) = a * pi / 4 for any c
        np.testing.assert_allclose(-u, table[label]["lr"], rtol=1e-6, err_msg=path)
    assert table["hidden:64"]["eps"] is None


def test_optimizer_updates_stay_finite_with_zero_gradients_under_atan2():
    cfg = cfg_of("optim.eps_rule=atan2")
    params = init_params(cfg, jax.random.key(0))
    u = _step(cfg, params, jax.tree.map(jnp.zeros_like, params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    assert optax.tree.norm(u) == 0  # atan2(0, 0) = 0: no NaN where a gradient is exactly zero
