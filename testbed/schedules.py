"""Learning-rate schedules as pure functions of the step, returning the multiplier of the peak LR.

Each returns an optax-style `schedule(step) -> factor` that works on Python ints and traced jnp scalars alike,
so the same function drives the jitted step and the host-side logging of the LR actually applied.
Step s is the update that produces step s+1's params: step 0 is the first update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

from testbed.config import OptimConfig

Schedule = Callable[[jnp.ndarray | int], jnp.ndarray]


def _warmup(step, warmup_steps: int):
    """Linear warmup reaching the peak at the end of step warmup_steps - 1 (first update is 1/warmup)."""
    if warmup_steps <= 0:
        return jnp.ones_like(jnp.asarray(step, jnp.float32))
    return jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps)


def _progress(step, start: int, length: int):
    """Fraction in [0, 1] of the way through [start, start + length)."""
    return jnp.clip((jnp.asarray(step, jnp.float32) - start) / max(length, 1), 0.0, 1.0)


def constant(total_steps: int, warmup_steps: int = 0) -> Schedule:
    return lambda step: _warmup(step, warmup_steps)


def cosine(total_steps: int, warmup_steps: int = 0, final_frac: float = 0.1) -> Schedule:
    """Cosine decay from 1 at the end of warmup to final_frac at the last step."""
    decay = total_steps - warmup_steps - 1

    def f(step):
        t = _progress(step, warmup_steps, decay)
        cos = final_frac + (1 - final_frac) * 0.5 * (1 + jnp.cos(math.pi * t))
        return jnp.where(jnp.asarray(step) < warmup_steps, _warmup(step, warmup_steps), cos)

    return f


def linear(total_steps: int, warmup_steps: int = 0, final_frac: float = 0.0) -> Schedule:
    """Linear decay from 1 at the end of warmup to final_frac at the last step."""
    decay = total_steps - warmup_steps - 1

    def f(step):
        t = _progress(step, warmup_steps, decay)
        lin = 1 - (1 - final_frac) * t
        return jnp.where(jnp.asarray(step) < warmup_steps, _warmup(step, warmup_steps), lin)

    return f


def inverse_sqrt(total_steps: int, warmup_steps: int = 0) -> Schedule:
    """1 during warmup's end, then sqrt(warmup / (step + 1)) (Vaswani et al.); no warmup means reference 1."""
    ref = max(warmup_steps, 1)

    def f(step):
        s = jnp.asarray(step, jnp.float32) + 1.0
        decay = jnp.sqrt(ref / jnp.maximum(s, ref))
        return jnp.where(jnp.asarray(step) < warmup_steps, _warmup(step, warmup_steps), decay)

    return f


def wsd(total_steps: int, warmup_steps: int = 0, cooldown_frac: float = 0.2, final_frac: float = 0.0,
        shape: str = "linear") -> Schedule:
    """Warmup-stable-decay (Hägele et al. 2024): hold the peak, then cool down over the last cooldown_frac.

    The cooldown reaches final_frac at the last step; shapes: linear, cosine, 1-sqrt
    (`final + (1 - final) * (1 - sqrt(t))`).
    """
    cool = int(round(cooldown_frac * total_steps))
    hold_end = total_steps - cool  # first cooldown step

    def f(step):
        t = _progress(step, hold_end, cool - 1) if cool > 1 else (jnp.asarray(step) >= hold_end) * 1.0
        if shape == "linear":
            g = 1 - t
        elif shape == "cosine":
            g = 0.5 * (1 + jnp.cos(math.pi * t))
        elif shape == "1-sqrt":
            g = 1 - jnp.sqrt(t)
        else:
            raise ValueError(f"unknown cooldown shape {shape!r}")
        value = jnp.where(jnp.asarray(step) >= hold_end, final_frac + (1 - final_frac) * g, 1.0)
        return jnp.where(jnp.asarray(step) < warmup_steps, _warmup(step, warmup_steps), value)

    return f


def from_config(o: OptimConfig, total_steps: int) -> Schedule:
    """The configured schedule as a factor of the peak LR."""
    w = o.warmup_steps
    if o.schedule == "constant":
        return constant(total_steps, w)
    if o.schedule == "cosine":
        return cosine(total_steps, w, o.final_lr_frac)
    if o.schedule == "linear":
        return linear(total_steps, w, o.final_lr_frac)
    if o.schedule == "inverse_sqrt":
        return inverse_sqrt(total_steps, w)
    if o.schedule == "wsd":
        return wsd(total_steps, w, o.cooldown_frac, o.final_lr_frac, o.cooldown_shape)
    raise ValueError(f"optim.schedule: unknown schedule {o.schedule!r}")
