"""The optimizer owns the learning rate: one optax chain built from the parametrization table and the schedule.

optim.name picks the update direction (AdamW, Lion, Muon, schedule-free AdamW; see `direction`); everything
else (groups, multipliers, decay, schedule, injected hyperparameters) is shared by all four.

`make_optimizer(cfg, info)` is the only place an LR is computed. Parameters are grouped by their ParamInfo
(testbed.model.param_info: role, fan-in, inside a block or not); each group reads its LR, weight-decay and eps
multipliers from testbed.parametrization, so SP, muP, CompleteP and the weight-decay rules differ only in the
table. The chain is clip -> per group (direction -> decoupled decay -> -lr_t * lr_mult), where lr_t = peak LR x the
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


def _scale_by_adam(cfg: Config, eps_mult: float, b1: float) -> optax.GradientTransformation:
    o = cfg.optim
    if o.eps_rule == "atan2":
        return scale_by_adam_atan2(b1, o.beta2, o.atan2_a, o.atan2_b)
    return optax.scale_by_adam(b1, o.beta2, eps=o.eps * eps_mult)


def scale_by_shape() -> optax.GradientTransformation:
    """x sqrt(max(1, fan_out / fan_in)) per [fan_in, fan_out] matrix: an orthogonalized update's spectral norm
    made the one the spectral condition asks for (Bernstein et al.). optax.contrib.muon applies the same factor
    but keeps its transform private in optax 0.2.8, hence this one line."""
    return optax.stateless(lambda u, p: jax.tree.map(lambda x: x * max(1.0, x.shape[1] / x.shape[0]) ** 0.5, u))


def direction(cfg: Config, role: str, eps_mult: float) -> optax.GradientTransformation:
    """The update direction of one group under optim.name, before decay and the LR.

    adamw: Adam. lion: sign(interpolated momentum) (optax.scale_by_lion, with optim.beta1/beta2). muon: hidden
    matrices get Nesterov momentum orthogonalized by Newton-Schulz (optax.contrib.scale_by_muon) and scaled by
    their shape; embeddings, gains and the readout keep Adam, as Muon's authors train them. schedule_free_adamw:
    Adam without momentum (b1 = 0); the averaging that replaces it wraps the whole chain (make_optimizer).
    """
    o, update = cfg.optim, update_name(cfg, role)
    if update == "lion":
        return optax.scale_by_lion(o.beta1, o.beta2)
    if update == "muon":
        # every hidden kernel is one [fan_in, fan_out] matrix; given per leaf because optax.partition hands the
        # transform a tree whose other groups' leaves are masked out (a bare default would not match it)
        dims = lambda u: jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(), u)  # noqa: E731
        muon = optax.contrib.scale_by_muon(beta=o.muon_momentum, ns_steps=o.ns_steps, weight_dimension_numbers=dims)
        return optax.chain(muon, scale_by_shape())
    return _scale_by_adam(cfg, eps_mult, 0.0 if update == "schedule_free_adamw" else o.beta1)


def decays(cfg: Config) -> bool:
    return cfg.optim.weight_decay > 0 or cfg.optim.wd_rule == "timescale"


def _group_scales(cfg: Config, info) -> dict[str, parametrization.RoleScale]:
    """The table's row for every group of the ParamInfo tree, by group label."""
    leaves: list[ParamInfo] = jax.tree.leaves(info)
    return {i.group: parametrization.role_scale(cfg, i) for i in sorted(leaves, key=lambda i: i.group)}


def make_optimizer(cfg: Config, info) -> optax.GradientTransformation:
    """clip -> per group (direction -> decoupled decay -> -peak_lr * schedule(count) * lr_mult), the direction
    chosen by optim.name (`direction`); schedule_free_adamw wraps it in optax.contrib.schedule_free. `info` is
    testbed.model.param_info(params). Its state carries the peak LR and weight decay (see `init`)."""
    o = cfg.optim
    labels = jax.tree.map(lambda i: i.group, info)
    scales = _group_scales(cfg, info)

    def by_group(peak_lr, weight_decay, lr_factor):
        lr_t = peak_lr * lr_factor
        lam = coupled_decay(cfg, weight_decay, peak_lr)
        groups = {}
        for label, s in scales.items():
            parts = [direction(cfg, label.split(":")[0], s.eps_mult)]
            if s.wd_mult and decays(cfg):
                parts.append(optax.add_decayed_weights(lam * s.wd_mult))
            parts.append(optax.scale_by_learning_rate(lr_t * s.lr_mult))
            groups[label] = optax.chain(*parts)
        tx = optax.partition(groups, labels)
        if o.grad_clip is not None:
            tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
        if o.name == "schedule_free_adamw":  # weights of the average ~ lr_t^2: warmup steps count less
            tx = optax.contrib.schedule_free(tx, learning_rate=lr_t, b1=o.beta1)
        return tx

    return optax.inject_hyperparams(by_group)(
        **hyperparams(cfg), lr_factor=schedules.Stateful(o, cfg.total_steps))


def eval_params_fn(cfg: Config, packed: bool = False):
    """(opt_state, params) -> the weights to evaluate, jitted (vmapped over a pack's members when `packed`).
    Schedule-free's averaged iterate x (params hold its interpolation y, where gradients are taken; its state is
    the chain's inner state, see make_optimizer); the identity, free, for every other optimizer."""
    if cfg.optim.name != "schedule_free_adamw":
        return lambda opt_state, params: params

    def x(opt_state, params):
        return optax.contrib.schedule_free_eval_params(opt_state.inner_state, params)

    return jax.jit(jax.vmap(x) if packed else x)


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
        lr_g, lam_g, update = o.lr * s.lr_mult, lam * s.wd_mult, update_name(cfg, label.split(":")[0])
        table[label] = {
            "params": counts[label], "lr": lr_g, "weight_decay": lam_g,
            "update": update,
            "eps": None if o.eps_rule == "atan2" or update in ("lion", "muon") else o.eps * s.eps_mult,
            "init_std": None if label.startswith("vector") else s.init_std,
            "tau_iter": 1.0 / (lr_g * lam_g) if lr_g * lam_g > 0 else None,
        }
    return table


def update_name(cfg: Config, role: str) -> str:
    """What moves one role's parameters: the optimizer, or Adam for the roles Muon leaves to it (`direction` and
    the per-group table both read this)."""
    name = cfg.optim.name
    return "adam" if name == "muon" and role != "hidden" else name
