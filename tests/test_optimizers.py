"""optim.name: each update rule equals optax's own on a small tree, Muon orthogonalizes, configs that make no
sense for a rule are refused, and every rule packs and resumes like AdamW."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from testbed import config as C
from testbed import optim
from testbed.model import param_info
from testbed.pack import train_pack
from testbed.train import train

from .test_diagnostics import check
from .test_optim import grads_like, setup
from .test_pack import TINY, assert_same_curves, quiet, rows
from .test_pack import cfg as pack_cfg
from .test_train import curve


def steps(tx, params, n=3, whole=None):
    """n updates of tx on fixed pseudo-random gradients (those of `whole`'s leaves when params is a flat subset
    of a model's tree `whole`); the final params and optimizer state."""
    state = tx.init(params)
    for i in range(n):
        g = grads_like(params, i) if whole is None else {k: v for k, v in flat(grads_like(whole, i)).items()
                                                          if k in params}
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


def flat(tree) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(ours, ref, keys=None):
    a, b = flat(ours), flat(ref)
    for k in keys or a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_lion_equals_optax_lion():
    cfg, params = setup(["optim.name=lion", "optim.lr=1e-3", "optim.weight_decay=0.1", "optim.beta2=0.99",
                         "optim.decay_vectors=true"])
    ours, _ = steps(optim.make_optimizer(cfg, param_info(params)), params)
    ref, _ = steps(optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=0.1), params)
    assert_close(ours, ref)


def test_muon_equals_optax_muon_on_hidden_matrices_and_adam_elsewhere():
    cfg, params = setup(["optim.name=muon", "optim.lr=2e-2", "optim.eps=1e-8"])
    info = param_info(params)
    ours, _ = steps(optim.make_optimizer(cfg, info), params)
    hidden = {k for k, i in flat(info).items() if i.role == "hidden"}
    assert hidden and all(v.ndim == 2 for k, v in flat(params).items() if k in hidden)
    pick = lambda keep: {k: v for k, v in flat(params).items() if (k in hidden) == keep}  # noqa: E731
    # optax's own Muon (orthogonalized Nesterov momentum, scaled by sqrt(max(1, fan_out / fan_in))) on the hidden
    # matrices; Adam with the same betas on the rest
    muon_ref, _ = steps(optax.contrib.muon(2e-2, beta=0.95, ns_steps=5, eps=1e-8), pick(True), whole=params)
    adam_ref, _ = steps(optax.adam(2e-2, b1=0.9, b2=0.95, eps=1e-8), pick(False), whole=params)
    got = flat(ours)
    for ref in (muon_ref, adam_ref):
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, rtol=2e-5, atol=1e-7, err_msg=k)
    table = optim.group_table(cfg, info, params)
    assert {g: r["update"] for g, r in table.items() if g.startswith("hidden")} == \
        {g: "muon" for g in table if g.startswith("hidden")}
    assert {r["update"] for g, r in table.items() if not g.startswith("hidden")} == {"adam"}


def test_schedule_free_equals_optax_and_evaluates_its_average():
    cfg, params = setup(["optim.name=schedule_free_adamw", "optim.lr=1e-2", "optim.weight_decay=0.05",
                         "optim.decay_vectors=true", "optim.eps=1e-8"])
    ours, state = steps(optim.make_optimizer(cfg, param_info(params)), params, n=4)
    ref_tx = optax.contrib.schedule_free_adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05)
    ref, ref_state = steps(ref_tx, params, n=4)
    assert_close(ours, ref)  # y, where gradients are taken
    x_ours = optim.eval_params_fn(cfg)(state, ours)
    assert_close(x_ours, optax.contrib.schedule_free_eval_params(ref_state, ref))  # x, what is evaluated
    assert not np.allclose(flat(x_ours)["['embed']['embedding']"], flat(ours)["['embed']['embedding']"])


def test_muon_update_has_near_unit_singular_values():
    """One step from zero momentum: the update is Newton-Schulz(g), whose singular values all sit near 1 (the
    quintic's band, ~0.7-1.2), then x sqrt(fan_out / fan_in)."""
    cfg = C.load(None, ["optim.name=muon", "train.steps=10"])
    g = jax.random.normal(jax.random.key(0), (64, 128)) * 3.0
    tx = optim.direction(cfg, "hidden", 1.0)
    u, _ = tx.update({"w": g}, tx.init({"w": g}))
    s = np.linalg.svd(np.asarray(u["w"]) / np.sqrt(128 / 64), compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25, s
    assert abs(np.mean(s) - 1) < 0.15
    s_g = np.linalg.svd(np.asarray(g), compute_uv=False)
    assert s_g.max() / s_g.min() > 3 and s_g.min() > 5  # the gradient itself was far from orthogonal


@pytest.mark.parametrize("overrides, key, reason", [
    (["optim.name=lion", "optim.eps_rule=scaled"], "optim.eps_rule", "no eps"),
    (["optim.name=muon", "optim.wd_rule=sqrt", "optim.weight_decay=0.1"], "optim.wd_rule", "width"),
    (["optim.name=schedule_free_adamw", "optim.schedule=cosine"], "optim.schedule", "averaging"),
    (["optim.name=schedule_free_adamw", "optim.schedule=constant", "optim.beta1=0"], "optim.beta1", "> 0"),
    (["optim.name=sgd"], "optim.name", "adamw"),
])
def test_rules_that_do_not_apply_are_refused(overrides, key, reason, tmp_path, cli):
    with pytest.raises(C.ConfigError, match=key) as e:
        C.load(TINY, overrides)
    assert reason in str(e.value)
    r = cli("train", str(TINY), *[x for o in overrides for x in ("--set", o)], "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and key in r.stderr
    assert not (tmp_path / "run").exists()


def test_new_keys_at_their_defaults_keep_run_ids():
    base = C.load(TINY)
    assert "name" not in C.identity(base)["optim"]
    assert C.run_id(base) != C.run_id(C.load(TINY, ["optim.name=lion"]))


def test_muon_hidden_lr_is_width_constant_under_mup():
    """Adam's hidden LR falls as 1 / m under muP; Muon's stays (its update's norm is set by the shape)."""
    for name, ratio in (("adamw", 0.25), ("muon", 1.0)):
        lrs = []
        for width in (64, 256):
            cfg, params = setup([f"optim.name={name}", "param.name=mup", "param.base_width=64",
                                 f"model.d_model={width}", "model.head_dim=16", f"model.n_heads={width // 16}"])
            table = optim.group_table(cfg, param_info(params), params)
            lrs.append(next(r["lr"] for g, r in table.items() if g.startswith("hidden")))
        assert lrs[1] / lrs[0] == pytest.approx(ratio), name


@pytest.mark.parametrize("name", ["lion", "muon", "schedule_free_adamw"])
def test_each_rule_packs_like_single_runs_and_resumes_bitwise(name, tmp_path):
    """A pack of two LRs matches the two runs trained alone; a run stopped at step 6 and resumed logs the same
    curve, bitwise, as the uninterrupted one."""
    lrs = {"lion": (3e-4, 1e-3), "muon": (1e-2, 3e-2), "schedule_free_adamw": (3e-3, 1e-2)}[name]
    cfgs = [pack_cfg(f"optim.name={name}", f"optim.lr={lr}", "optim.weight_decay=0.01") for lr in lrs]
    packed = train_pack(cfgs, [tmp_path / "p0", tmp_path / "p1"], progress=False, log=quiet)
    assert [s["status"] for s in packed] == ["completed"] * 2 and packed[0]["packed"] == 2
    for i, c in enumerate(cfgs):
        single = train(c, tmp_path / f"s{i}", progress=False, log=quiet)
        assert_same_curves(tmp_path / f"p{i}", tmp_path / f"s{i}")
        assert packed[i]["final_eval_loss"] == pytest.approx(single["final_eval_loss"], rel=1e-4)
    assert packed[0]["final_eval_loss"] != packed[1]["final_eval_loss"]
    stopped = lambda: (tmp_path / "cut" / "metrics.jsonl").exists() and len(rows(tmp_path / "cut")) >= 5  # noqa: E731
    assert train(cfgs[0], tmp_path / "cut", progress=False, log=quiet, should_stop=stopped)["status"] == "incomplete"
    train(cfgs[0], tmp_path / "cut", progress=False, log=quiet)
    if jax.default_backend() == "cpu":
        assert curve(tmp_path / "cut") == curve(tmp_path / "s0")


@pytest.mark.parametrize("name", ["muon", "lion"])
def test_coordcheck_passes_under_mup_and_fails_under_sp(name):
    """The width rule each update reads from the table holds: muP's activations stay put across width (Muon with
    its width-constant hidden LR), SP's grow."""
    mup = check("mup", widths=[64, 256], extra=[f"optim.name={name}"])
    assert mup["passed"], mup["worst_ratio_4x"]
    sp = check("sp", widths=[64, 256], extra=[f"optim.name={name}"])
    assert not sp["passed"] and sp["worst_ratio_4x"]["ratio"] > 2.0
