"""The optax AdamW chain, built per parameter group from the parametrization table.

Parameters are grouped by (role, fan-in, inside a block or not); each group reads its LR, weight-decay and eps
multipliers from testbed.parametrization, so SP, muP, CompleteP and the weight-decay rules differ only in the
table. The peak LR and weight decay are injected hyperparameters (`optax.inject_hyperparams`): the train step
sets them from its `hparams` argument each step, which keeps the step a pure function that can be vmapped
over hyperparameters.

Weight decay conventions (REFERENCE.md section 2):
  coupled      theta <- theta - eta_t * (u + lambda * theta)      (optax.adamw / PyTorch AdamW)
  independent  theta <- (1 - s_t * lambda) * theta - eta_t * u,   s_t = eta_t / eta_peak
The independent form is the coupled one with lambda_coupled = lambda / eta_peak (see `coupled_decay`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from testbed import parametrization as P
from testbed.config import Config
from testbed.model import param_fan_ins, param_in_block, param_roles


def group_labels(params) -> dict:
    """A tree of 'role:fan_in[:block]' labels, the unit at which the table can differ."""
    return jax.tree.map(lambda r, f, b: f"{r}:{f}" + (":block" if b and r == "vector" else ""),
                        param_roles(params), param_fan_ins(params), param_in_block(params))


def group_scale(cfg: Config, label: str) -> P.RoleScale:
    """The table's row for a group label."""
    role, fan_in, *block = label.split(":")
    return P.role_scale(cfg, role, int(fan_in), in_block=role == "hidden" or bool(block))


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


def make_optimizer(cfg: Config, params) -> optax.GradientTransformation:
    """clip -> per-group (Adam -> decoupled decay -> -lr * lr_mult), with lr and wd injected."""
    o = cfg.optim
    labels = group_labels(params)
    label_set = sorted(set(jax.tree.leaves(labels)))

    def adamw_by_group(learning_rate, weight_decay):
        groups = {}
        for label in label_set:
            s = group_scale(cfg, label)
            parts = [_scale_by_adam(cfg, s.eps_mult)]
            if s.wd_mult and decays(cfg):
                parts.append(optax.add_decayed_weights(weight_decay * s.wd_mult))
            parts.append(optax.scale_by_learning_rate(learning_rate * s.lr_mult))
            groups[label] = optax.chain(*parts)
        tx = optax.partition(groups, labels)
        if o.grad_clip is not None:
            tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
        return tx

    return optax.inject_hyperparams(adamw_by_group)(
        learning_rate=jnp.float32(o.lr), weight_decay=jnp.float32(coupled_decay(cfg, o.weight_decay, o.lr)))


def inject(cfg: Config, opt_state, lr_t, hparams: dict):
    """Sets this step's LR (peak * schedule) and the coupled decay realising hparams' weight decay."""
    wd = coupled_decay(cfg, hparams["weight_decay"], hparams["lr"])
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr_t, "weight_decay": wd})


def default_hparams(cfg: Config) -> dict:
    """The vmappable hyperparameters the train step takes as an argument (peak LR, weight decay)."""
    return {"lr": jnp.float32(cfg.optim.lr), "weight_decay": jnp.float32(cfg.optim.weight_decay)}


def group_table(cfg: Config, params) -> dict:
    """Per group: effective peak LR, coupled lambda, eps and tau_iter = 1 / (eta_g * lambda_g) in steps.

    What a researcher checks a transfer rule against; written to summary.json and printed by `testbed info`.
    """
    o = cfg.optim
    lam = float(coupled_decay(cfg, o.weight_decay, o.lr)) if decays(cfg) else 0.0
    labels = group_labels(params)
    counts: dict[str, int] = {}
    for label, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params), strict=True):
        counts[label] = counts.get(label, 0) + int(leaf.size)
    table = {}
    for label in sorted(counts):
        s = group_scale(cfg, label)
        lr_g, lam_g = o.lr * s.lr_mult, lam * s.wd_mult
        table[label] = {
            "params": counts[label], "lr": lr_g, "weight_decay": lam_g,
            "eps": None if o.eps_rule == "atan2" else o.eps * s.eps_mult,
            "init_std": None if label.startswith("vector") else s.init_std,
            "tau_iter": 1.0 / (lr_g * lam_g) if lr_g * lam_g > 0 else None,
        }
    return table
