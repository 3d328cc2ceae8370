"""The optimizer owns the learning rate: one optax chain built from the parametrization table and the schedule.

`make_optimizer(cfg, info)` is the only place an LR is computed. Parameters are grouped by their ParamInfo
(testbed.model.param_info: role, fan-in, inside a block or not); each group reads its LR, weight-decay and eps
multipliers from testbed.parametrization, so SP, muP, CompleteP and the weight-decay rules differ only in the
table. The chain is clip -> per group (Adam -> decoupled decay -> -lr_t * lr_mult), where lr_t = peak LR x the
schedule's factor at the chain's own step count. The peak LR and weight decay are injected once, at init, as
hyperparameters (`optax.inject_hyperparams`), and the schedule's numbers (length, warmup, cooldown) ride in its
schedule state: all live in the optimizer state, so the train step is a pure function of (params, optimizer state,
batch), a pack of runs vmaps over them with the state (`init`), and runs of different lengths share one program.

Weight decay conventions (Loshchilov & Hutter; Wang & Aitchison):
  coupled      theta <- theta - eta_t * (u + lambda * theta)      (optax.adamw / PyTorch AdamW)
  independent  theta <- (1 - s_t * lambda) * theta - eta_t * u,   s_t = eta_t / eta_peak
The independent form is the coupled one with lambda_coupled = lambda / eta_peak (see `coupled_decay`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from testbed import parametrization, schedules
from testbed.config import Config
from testbed.parametrization import ParamInfo

HYPERPARAMS = ("peak_lr", "weight_decay")  # per-run values a pack's members may differ in (testbed.vmappable)


def coupled_decay(cfg: Config, weight_decay, peak_lr):
    """The coupled lambda that realises the configured weight decay in its convention and rule.

    timescale (Wang & Aitchison): lambda = 1 / (eta_peak * tau_iter), tau_iter = tau_frac * steps; each group's
    wd_mult (1 / its LR multiplier) then gives every group the same tau_iter.
    """
    o = cfg.optim
    if o.wd_rule == "timescale":
        return 1.0 / (peak_lr * o.tau_frac * cfg.total_steps)
    if o.wd_convention == "independent":
        return weight_decay / peak_lr
    return weight_decay


def scale_by_adam_atan2(b1: float, b2: float, a: float, b: float) -> optax.GradientTransformation:
    """Adam-atan2 (Everett et al. 2024): a * atan2(m_hat, b * sqrt(v_hat)), scale-invariant and eps-free.

    Not in optax 0.2.8; written with optax's own moment and bias-correction helpers and Adam's state type.
    """

    def init_fn(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                                      nu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat, nu_hat = optax.tree.bias_correction(mu, b1, count), optax.tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(lambda m, v: a * jnp.arctan2(m, b * jnp.sqrt(v)), mu_hat, nu_hat)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_adam(cfg: Config, eps_mult: float) -> optax.GradientTransformation:
    o = cfg.optim
    if o.eps_rule == "atan2":
        return scale_by_adam_atan2(o.beta1, o.beta2, o.atan2_a, o.atan2_b)
    return optax.scale_by_adam(o.beta1, o.beta2, eps=o.eps * eps_mult)


def decays(cfg: Config) -> bool:
    return cfg.optim.weight_decay > 0 or cfg.optim.wd_rule == "timescale"


def _group_scales(cfg: Config, info) -> dict[str, parametrization.RoleScale]:
    """The table's row for every group of the ParamInfo tree, by group label."""
    leaves: list[ParamInfo] = jax.tree.leaves(info)
    return {i.group: parametrization.role_scale(cfg, i) for i in sorted(leaves, key=lambda i: i.group)}


def make_optimizer(cfg: Config, info) -> optax.GradientTransformation:
    """clip -> per group (Adam -> decoupled decay -> -peak_lr * schedule(count) * lr_mult); `info` is
    testbed.model.param_info(params). Its state carries the peak LR and weight decay (see `init`)."""
    o = cfg.optim
    labels = jax.tree.map(lambda i: i.group, info)
    scales = _group_scales(cfg, info)

    def adamw_by_group(peak_lr, weight_decay, lr_factor):
        lr_t = peak_lr * lr_factor
        lam = coupled_decay(cfg, weight_decay, peak_lr)
        groups = {}
        for label, s in scales.items():
            parts = [_scale_by_adam(cfg, s.eps_mult)]
            if s.wd_mult and decays(cfg):
                parts.append(optax.add_decayed_weights(lam * s.wd_mult))
            parts.append(optax.scale_by_learning_rate(lr_t * s.lr_mult))
            groups[label] = optax.chain(*parts)
        tx = optax.partition(groups, labels)
        if o.grad_clip is not None:
            tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
        return tx

    return optax.inject_hyperparams(adamw_by_group)(
        **hyperparams(cfg), lr_factor=schedules.Stateful(o, cfg.total_steps))


def hyperparams(cfg: Config) -> dict:
    """The run's injected hyperparameters: peak LR and weight decay (in the configured convention)."""
    return {"peak_lr": jnp.float32(cfg.optim.lr), "weight_decay": jnp.float32(cfg.optim.weight_decay)}


def init(tx: optax.GradientTransformation, params, cfg: Config):
    """tx's state for `params`, carrying cfg's peak LR and weight decay: the members of a pack share one tx (one
    traced chain) and differ only in these values of their states."""
    opt_state = jax.jit(tx.init)(params)  # one program: eagerly, the schedule's scalar ops compile one at a time
    return with_schedule(opt_state._replace(hyperparams={**opt_state.hyperparams, **hyperparams(cfg)}), cfg)


def with_schedule(opt_state, cfg: Config):
    """opt_state with cfg's schedule numbers (its length, warmup, cooldown), its update count kept: a fresh run's,
    or a branch's after it restored its parent's state. They are data in the state, so runs that differ only in
    them share one compiled step (testbed.schedules)."""
    old = opt_state.hyperparams_states["lr_factor"]
    new = schedules.state(schedules.numbers(cfg.optim, cfg.total_steps), count=old.count)
    return opt_state._replace(hyperparams_states={**opt_state.hyperparams_states, "lr_factor": new})


def applied_lr(opt_state):
    """The base LR (before group multipliers) the last update applied: peak LR x the schedule's factor."""
    hp = opt_state.hyperparams
    return hp["peak_lr"] * hp["lr_factor"]


def group_table(cfg: Config, info, params) -> dict:
    """Per group: parameter count, effective peak LR, coupled lambda, eps, init std and tau_iter = 1 / (eta_g *
    lambda_g) in steps. What a researcher checks a transfer rule against; in summary.json and `testbed info`."""
    o = cfg.optim
    lam = float(coupled_decay(cfg, o.weight_decay, o.lr)) if decays(cfg) else 0.0
    counts: dict[str, int] = {}
    for i, leaf in zip(jax.tree.leaves(info), jax.tree.leaves(params), strict=True):
        counts[i.group] = counts.get(i.group, 0) + int(leaf.size)
    table = {}
    for label, s in _group_scales(cfg, info).items():
        lr_g, lam_g = o.lr * s.lr_mult, lam * s.wd_mult
        table[label] = {
            "params": counts[label], "lr": lr_g, "weight_decay": lam_g,
            "eps": None if o.eps_rule == "atan2" else o.eps * s.eps_mult,
            "init_std": None if label.startswith("vector") else s.init_std,
            "tau_iter": 1.0 / (lr_g * lam_g) if lr_g * lam_g > 0 else None,
        }
    return table
