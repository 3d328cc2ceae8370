from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from testbed import config as C
from testbed.model import init_params, param_info
from testbed.optim import make_optimizer


def setup(overrides):
    cfg = C.load(None, ["train.steps=10", "model.d_model=32", "model.n_heads=2", "data.seq_len=16",
                        "optim.schedule=constant", "optim.grad_clip=null", *overrides])
    params = init_params(cfg, jax.random.key(0))
    return cfg, params


def grads_like(params, seed=0):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])


def run(cfg, params, tx, hp, n=3):
    opt = tx.init(params)
    for i in range(n):
        g = grads_like(params, i)
        opt = opt._replace(hyperparams={**opt.hyperparams, "peak_lr": hp["lr"], "weight_decay": hp["wd"]})
        u, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, u)
    return params


def test_sp_coupled_equals_optax_adamw_with_vector_mask():
    cfg, params = setup(["optim.lr=1e-2", "optim.weight_decay=0.1", "optim.eps=1e-6"])
    ours = run(cfg, params, make_optimizer(cfg, param_info(params)), {"lr": 1e-2, "wd": 0.1})
    mask = jax.tree.map(lambda i: i.role != "vector", param_info(params))
    ref_tx = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.1, mask=mask)
    ref, st = params, ref_tx.init(params)
    for i in range(3):
        u, st = ref_tx.update(grads_like(params, i), st, ref)
        ref = optax.apply_updates(ref, u)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_vectors_not_decayed_and_role_multipliers():
    """Zero gradient isolates decay: hidden/readout/embedding shrink by (1 - lr*wd*mult), vectors stay."""
    cfg, params = setup(["optim.lr=0.1", "optim.weight_decay=0.5", "optim.wd_mult.embedding=0.0",
                         "optim.lr_mult.readout=2.0"])
    tx = make_optimizer(cfg, param_info(params))
    opt = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = tx.update(zeros, opt, params)
    new = optax.apply_updates(params, u)
    ratio = lambda a, b: float(jnp.sum(a * b) / jnp.sum(b * b))
    assert ratio(new["block_0"]["mlp"]["up"]["kernel"], params["block_0"]["mlp"]["up"]["kernel"]) == \
        pytest.approx(1 - 0.1 * 0.5)
    assert ratio(new["readout"]["kernel"], params["readout"]["kernel"]) == pytest.approx(1 - 2 * 0.1 * 0.5)
    np.testing.assert_array_equal(new["embed"]["embedding"], params["embed"]["embedding"])
    np.testing.assert_array_equal(new["final_norm"]["RMSNorm_0"]["scale"],
                                  params["final_norm"]["RMSNorm_0"]["scale"])


def test_independent_decay_does_not_scale_with_peak_lr():
    """Independent convention: per-step decay = s_t * lambda whatever the peak LR; coupled: eta_t * lambda."""
    decay = {}
    for conv in ("independent", "coupled"):
        for lr in (1e-3, 1e-1):
            cfg, params = setup([f"optim.lr={lr}", "optim.weight_decay=0.01", f"optim.wd_convention={conv}",
                                 "optim.schedule=linear", "optim.final_lr_frac=0", "train.steps=3"])
            tx = make_optimizer(cfg, param_info(params))
            opt = tx.init(params)  # the linear schedule over 3 steps is at 0.5 at its update 1: s_t = 0.5
            opt = opt._replace(hyperparams_states={"lr_factor": opt.hyperparams_states["lr_factor"]._replace(
                count=jnp.int32(1))})
            u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), opt, params)
            w = params["block_0"]["attn"]["out"]["kernel"]
            upd = u["block_0"]["attn"]["out"]["kernel"]
            decay[conv, lr] = -float(jnp.sum(upd * w) / jnp.sum(w * w))
    assert decay["independent", 1e-3] == pytest.approx(0.5 * 0.01, rel=1e-5)
    assert decay["independent", 1e-1] == pytest.approx(0.5 * 0.01, rel=1e-5)
    assert decay["coupled", 1e-3] == pytest.approx(0.5 * 1e-3 * 0.01, rel=1e-5)
    assert decay["coupled", 1e-1] == pytest.approx(0.5 * 1e-1 * 0.01, rel=1e-5)


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_runs_of_different_lengths_share_one_train_step_program(schedule):
    """The schedule's numbers are state, not constants: a sweep's budgets (and WSD branches) compile one step per
    shape. The same program must still apply each run's own LR."""
    from testbed import schedules
    from testbed.train import init_state, make_train_step

    texts, lrs = [], []
    for steps, frac in ((40, 0.2), (90, 0.3)):
        cfg, params = setup([f"optim.schedule={schedule}", f"optim.cooldown_frac={frac}", f"train.steps={steps}",
                             "optim.warmup_steps=5", "optim.lr=1e-2"])
        tx = make_optimizer(cfg, param_info(params))
        state = init_state(cfg, tx, params)
        batch = jnp.zeros((1, 2, cfg.data.seq_len + 1), jnp.int32)
        step = jax.jit(make_train_step(cfg, tx))
        texts.append(step.lower(state, batch).as_text())
        sched = state["opt_state"].hyperparams_states["lr_factor"]  # fast-forward to update steps - 3
        state["opt_state"] = state["opt_state"]._replace(hyperparams_states={"lr_factor": sched._replace(
            count=jnp.int32(steps - 3))})
        _, metrics = step(state, batch)
        lrs.append((float(metrics["lr"]), 1e-2 * float(schedules.from_config(cfg.optim, steps)(steps - 3))))
    assert texts[0] == texts[1]
    for got, want in lrs:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
