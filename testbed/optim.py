"""The optax AdamW chain, built per parameter group from the parametrization table.

Parameters are grouped by (role, fan-in); each group reads its LR, weight-decay and eps multipliers from
testbed.parametrization, so SP and later muP differ only in the table. The peak LR and weight decay are
injected hyperparameters (`optax.inject_hyperparams`): the train step sets them from its `hparams` argument
each step, which keeps the step a pure function that can be vmapped over hyperparameters.

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
from testbed.model import param_fan_ins, param_roles


def group_labels(params) -> dict:
    """A tree of 'role:fan_in' labels, the unit at which the table can differ."""
    return jax.tree.map(lambda r, f: f"{r}:{f}", param_roles(params), param_fan_ins(params))


def coupled_decay(cfg: Config, weight_decay, peak_lr):
    """The coupled lambda that realises the configured weight decay in its convention."""
    if cfg.optim.wd_convention == "independent":
        return weight_decay / peak_lr
    return weight_decay


def make_optimizer(cfg: Config, params) -> optax.GradientTransformation:
    """clip -> per-group (Adam -> decoupled decay -> -lr * lr_mult), with lr and wd injected."""
    o = cfg.optim
    labels = group_labels(params)
    label_set = sorted(set(jax.tree.leaves(labels)))

    def adamw_by_group(learning_rate, weight_decay):
        groups = {}
        for label in label_set:
            role, fan_in = label.split(":")
            s = P.role_scale(cfg, role, int(fan_in))
            parts = [optax.scale_by_adam(o.beta1, o.beta2, eps=o.eps * s.eps_mult)]
            if s.wd_mult and o.weight_decay > 0:
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
