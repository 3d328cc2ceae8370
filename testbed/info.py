"""`testbed info CONFIG`: a config's accounting (parameters, FLOPs per token, memory estimate, tokens, training FLOPs,
parametrization) and its parameter groups (init std, peak LR, weight decay, eps, tau_iter), without touching
parameter memory; and the same as a table."""

from __future__ import annotations

from testbed import parametrization, shapes
from testbed.config import Config


def info(cfg: Config) -> dict:
    """Accounting and per-group optimizer settings of the config (`param_groups`: the groups by label)."""
    import jax

    from testbed.model import init_params, param_info
    from testbed.optim import group_table

    acc = shapes.count(cfg)
    out = {**acc.as_dict(), **shapes.memory_estimate_bytes(cfg), "tokens_per_step": cfg.tokens_per_step,
           "steps": cfg.total_steps, "tokens": cfg.total_steps * cfg.tokens_per_step,
           "train_flops": cfg.total_steps * cfg.tokens_per_step * acc.flops_per_token,
           "parametrization": parametrization.describe(cfg)}
    shapes_only = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # no parameter memory touched
    return {**out, "param_groups": group_table(cfg, param_info(shapes_only), shapes_only)}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_info(d: dict) -> str:
    """One line per quantity, then the parameter-group table."""
    lines = [f"{k:28s} {v:,}" if isinstance(v, int) else f"{k:28s} {v}" for k, v in d.items() if k != "param_groups"]
    lines += ["", f"{'group (role:fan_in)':22s} {'params':>10s} {'init_std':>9s} {'peak lr':>10s} {'lambda':>9s} "
                  f"{'eps':>9s} {'tau_iter':>10s}  update"]
    for label, g in d["param_groups"].items():
        lines.append(f"{label:22s} {g['params']:>10,} {_fmt(g['init_std']):>9s} {_fmt(g['lr']):>10s} "
                     f"{_fmt(g['weight_decay']):>9s} {_fmt(g['eps']):>9s} {_fmt(g['tau_iter']):>10s}  "
                     f"{g.get('update', '')}")
    return "\n".join(lines)
