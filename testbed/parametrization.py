"""The one table from (parametrization, role, width/depth multipliers) to init, forward, LR, WD and eps scales.

The model reads `init_std`, `forward_mult`, `attn_scale` and `residual_mult`; the optimizer reads `lr_mult`,
`wd_mult` and `eps_mult`. Nothing else decides how a parameter scales with width or depth.

Notation (Tensor Programs V): m = d_model / base_width; m_in = fan_in / base fan-in (every hidden fan-in
of this family, d_model, n_heads * head_dim and d_ff, scales with d_model, so m_in = m); m_L = n_layers /
base_depth; alpha = residual-branch exponent (0 for sp/mup, 0.5 depth_mup, 1 completep).

Every entry is SP's value times width/depth factors that are exactly 1.0 at m = m_L = 1, so all
parametrizations coincide bitwise with SP at the base shape (tests/test_parametrization.py checks it).

Roles (the model tags every parameter with a ParamInfo: role, fan-in, inside a block or not):
  embedding  token / position lookup tables (fan-in 1)
  hidden     matrices inside blocks (QKV, attention out, MLP in/gate/out); fan-in = kernel.shape[0]
  vector     norm gains and biases (`in_block`: inside a residual block, which depth rules treat apart)
  readout    the untied output matrix (a tied readout shares the embedding and its role)

This module is the one list of parametrization names and roles (testbed.config validates against them), so it
imports nothing from the rest of the package: `cfg` below is a testbed.config.Config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# name -> residual-branch exponent alpha; the names `param.name` accepts
DEPTH_ALPHA = {"sp": 0.0, "mup": 0.0, "depth_mup": 0.5, "completep": 1.0, "sp_perlayer": 0.0}
PARAMETRIZATIONS = tuple(DEPTH_ALPHA)
MUP_FAMILY = ("mup", "depth_mup", "completep")
DEPTH_RULES = ("depth_mup", "completep")
ROLES = ("embedding", "hidden", "vector", "readout")
# optim.name: the update rules (testbed.optim). Muon's hidden-matrix update is orthogonalized and scaled by its
# shape, so its LR keeps width-constant where Adam's (and Lion's, also entrywise +-1) needs 1 / m.
OPTIMIZERS = ("adamw", "lion", "muon", "schedule_free_adamw")


@dataclass(frozen=True)
class ParamInfo:
    """What the table needs to know about one parameter; the model gives one per leaf (testbed.model.param_info).

    A frozen dataclass, so a tree of them keeps one leaf per parameter (jax does not descend into it).
    """

    role: str
    fan_in: int = 1
    in_block: bool = False

    @property
    def group(self) -> str:
        """'role:fan_in[:block]': the unit at which the table can differ (optax.partition's label, summary key)."""
        return f"{self.role}:{self.fan_in}" + (":block" if self.in_block and self.role == "vector" else "")


@dataclass(frozen=True)
class RoleScale:
    """What the parametrization prescribes for one parameter."""

    init_std: float  # 0 means zero-init; vectors use their own fixed init (1 for gains, 0 for biases)
    forward_mult: float  # multiplier applied to the layer's output in the forward pass
    lr_mult: float  # multiplier of the peak LR (parametrization x user's optim.lr_mult)
    wd_mult: float  # multiplier of the coupled weight decay (0 = not decayed); includes optim.wd_rule
    eps_mult: float  # multiplier of Adam's eps (1 unless optim.eps_rule = scaled)


def width_mult(cfg) -> float:
    return cfg.model.d_model / cfg.param.base_width


def depth_mult(cfg) -> float:
    return cfg.model.n_layers / cfg.param.base_depth


def depth_alpha(cfg) -> float:
    return DEPTH_ALPHA[cfg.param.name]


def _width_lr(cfg, role: str, in_block: bool) -> float:
    """The parametrization's own LR factor (before user multipliers): 1 at m = m_L = 1."""
    p, m = cfg.param, width_mult(cfg)
    if p.name == "sp":
        return 1.0
    if p.name == "sp_perlayer":  # Everett et al. 2024: eta_g = eta * gamma_g * m^-c_g (gamma_g = optim.lr_mult)
        return m ** -p.perlayer_c.get(role, 0.0)
    # depth_mup / completep: x m_L^(alpha - 1) inside blocks; plain muP has no depth rule (factor 1)
    depth = depth_mult(cfg) ** (depth_alpha(cfg) - 1.0) if p.name in DEPTH_RULES else 1.0
    if role == "hidden":  # Muon: width-constant (its update's spectral norm is set by the matrix's shape)
        return (1.0 if cfg.optim.name == "muon" else 1.0 / m) * depth
    if role == "vector" and in_block:
        return depth
    return 1.0


def _eps_factor(cfg, role: str, in_block: bool) -> float:
    """CompleteP's eps rule: eps / m_in for hidden matrices, times m_L^-alpha for residual-block params."""
    if cfg.optim.eps_rule != "scaled" or cfg.param.name not in MUP_FAMILY:
        return 1.0
    m_L, a = depth_mult(cfg), depth_alpha(cfg)
    if role == "hidden":
        return (1.0 / width_mult(cfg)) * m_L ** -a
    if role == "vector" and in_block:
        return m_L ** -a
    return 1.0


def _wd_rule_factor(cfg, role: str, in_block: bool, lr_total: float) -> float:
    """optim.wd_rule (docs/transfer.md) as a multiplier of the coupled lambda of one group.

    constant_tau: eta_g * lambda_g constant across width/depth (lambda * m_in for muP hidden matrices).
    sqrt:         lambda * sqrt(m_in) for hidden matrices (Fan et al. 2025).
    timescale:    lambda_g = 1 / (tau_iter * eta_g), with tau_iter = tau_frac * steps (Wang & Aitchison);
                  the coupled lambda fed in is 1 / (tau_iter * eta) (see optim.coupled_decay), so here 1/lr_g.
    """
    rule = cfg.optim.wd_rule
    if rule == "constant_tau":
        return 1.0 / _width_lr(cfg, role, in_block)
    if rule == "sqrt":
        return math.sqrt(width_mult(cfg)) if role == "hidden" else 1.0
    if rule == "timescale":
        return 1.0 / lr_total
    return 1.0


def role_scale(cfg, info: ParamInfo) -> RoleScale:
    """The table. SP is every factor at 1; the muP family and sp_perlayer multiply in their factors."""
    role, in_block = info.role, info.in_block or info.role == "hidden"  # hidden matrices live in blocks
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    md, o, p = cfg.model, cfg.optim, cfg.param
    m = width_mult(cfg)
    mup = p.name in MUP_FAMILY
    lr_total = o.lr_mult.get(role, 1.0) * _width_lr(cfg, role, in_block)
    decayed = {"embedding": o.decay_embeddings, "vector": o.decay_vectors}.get(role, True)
    wd = o.wd_mult.get(role, 1.0) * float(decayed)
    if wd:
        wd *= _wd_rule_factor(cfg, role, in_block, lr_total)
    eps = _eps_factor(cfg, role, in_block)
    if role == "embedding":
        return RoleScale(md.emb_std, p.alpha_in, lr_total, wd, eps)
    if role == "hidden":
        fan_in_init = mup or p.sp_init == "fan_in"
        std = md.init_std / math.sqrt(m) if fan_in_init else md.init_std
        return RoleScale(std, 1.0, lr_total, wd, eps)
    if role == "vector":
        return RoleScale(1.0, 1.0, lr_total, wd, eps)
    # readout: zero-init optional; muP (Table 8) divides its output by m and keeps init and LR width-constant
    std = 0.0 if md.zero_init_readout else md.init_std
    return RoleScale(std, p.alpha_out / m if mup else p.alpha_out, lr_total, wd, eps)


def attn_scale(cfg) -> float:
    """Multiplier of q.k: alpha_attn / sqrt(d_head) in SP; muP's alpha_attn * sqrt(d_base) / d_head.

    Written as SP's value times sqrt(K_base / K), which is exactly 1.0 at the base head size.
    """
    K = cfg.model.resolved_head_dim
    sp = cfg.param.alpha_attn / math.sqrt(K)
    if cfg.param.name not in MUP_FAMILY:
        return sp
    K_base = cfg.param.base_head_dim or K
    return sp * math.sqrt(K_base / K)


def residual_mult(cfg) -> float:
    """Multiplier of each residual branch: m_L^-alpha (1 for sp/mup)."""
    return depth_mult(cfg) ** -depth_alpha(cfg)


def describe(cfg) -> dict:
    """The table's scalars for this config, for run directories and `testbed info`."""
    return {"name": cfg.param.name, "width_mult": width_mult(cfg), "depth_mult": depth_mult(cfg),
            "depth_alpha": depth_alpha(cfg), "attn_scale": attn_scale(cfg), "residual_mult": residual_mult(cfg)}
