"""The one table from (parametrization, role, width/depth multipliers) to init, forward, LR, WD and eps scales.

The model reads `init_std`, `forward_mult` and `attn_scale`; the optimizer reads `lr_mult`, `wd_mult` and
`eps_mult`. Nothing else decides how a parameter scales with width, so adding muP / CompleteP is a matter of
adding rows here (a later issue), not a rewrite of the model or optimizer.

Roles:
  embedding  token / position lookup tables (fan-in 1)
  hidden     matrices inside blocks (QKV, attention out, MLP in/gate/out); fan-in = kernel.shape[0]
  vector     norm gains and biases
  readout    the untied output matrix (a tied readout shares the embedding and its role)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from testbed.config import Config

ROLES = ("embedding", "hidden", "vector", "readout")


@dataclass(frozen=True)
class RoleScale:
    """What the parametrization prescribes for one parameter."""

    init_std: float  # 0 means zero-init; vectors use their own fixed init (1 for gains, 0 for biases)
    forward_mult: float  # multiplier applied to the layer's output in the forward pass
    lr_mult: float  # multiplier of the peak LR
    wd_mult: float  # multiplier of the configured weight decay (0 = not decayed)
    eps_mult: float  # multiplier of Adam's eps


def width_mult(cfg: Config) -> float:
    return cfg.model.d_model / cfg.param.base_width


def depth_mult(cfg: Config) -> float:
    return cfg.model.n_layers / cfg.param.base_depth


def role_scale(cfg: Config, role: str, fan_in: int = 1) -> RoleScale:
    """The table. Standard parametrization (SP): every width/depth multiplier is 1."""
    if cfg.param.name != "sp":
        raise ValueError(f"param.name: {cfg.param.name!r} is not implemented")
    m, o = cfg.model, cfg.optim
    user_lr = o.lr_mult.get(role, 1.0)
    user_wd = o.wd_mult.get(role, 1.0)
    if role == "embedding":
        return RoleScale(m.emb_std, 1.0, user_lr, user_wd * float(o.decay_embeddings), 1.0)
    if role == "hidden":
        return RoleScale(m.init_std, 1.0, user_lr, user_wd, 1.0)
    if role == "vector":
        return RoleScale(1.0, 1.0, user_lr, user_wd * float(o.decay_vectors), 1.0)
    if role == "readout":
        std = 0.0 if m.zero_init_readout else m.init_std
        return RoleScale(std, 1.0, user_lr, user_wd, 1.0)
    raise ValueError(f"unknown role {role!r}; roles are {ROLES}")


def attn_scale(cfg: Config) -> float:
    """Multiplier of q.k: 1/sqrt(d_head) in SP."""
    return 1.0 / math.sqrt(cfg.model.resolved_head_dim)


def residual_mult(cfg: Config) -> float:
    """Multiplier of each residual branch (1 in SP; m_L^-alpha under depth-muP/CompleteP)."""
    return 1.0
