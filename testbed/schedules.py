"""Learning-rate schedules as pure functions of the step, returning the multiplier of the peak LR.

Each returns an optax-style `schedule(step) -> factor` that works on Python ints and traced jnp scalars alike,
so the same function drives the jitted step and the host-side logging of the LR actually applied.
Step s is the update that produces step s+1's params: step 0 is the first update.

A schedule's numbers (its length, warmup, cooldown start, final fraction) are data, not constants of the program:
`stateful` keeps them in the optimizer state beside the update count, so runs that differ only in length or
cooldown (a sweep's budgets, WSD branches) share one compiled train step, and a branch swaps in its own numbers
after restoring its parent's state (`with_numbers`). Only the kind and the cooldown shape select code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from testbed.config import OptimConfig

Schedule = Callable[[jnp.ndarray | int], jnp.ndarray]
KINDS = ("constant", "cosine", "linear", "inverse_sqrt", "wsd")
SHAPES = ("linear", "cosine", "1-sqrt")


class ScheduleState(NamedTuple):
    """optax's schedule state (the update count) plus the schedule's numbers, so they can be traced."""
    count: jnp.ndarray  # int32: updates applied so far
    total: jnp.ndarray  # float32: the run's length in updates
    warmup: jnp.ndarray  # updates of linear warmup
    hold_end: jnp.ndarray  # wsd: the first cooldown update
    cool: jnp.ndarray  # wsd: cooldown length in updates
    final: jnp.ndarray  # the factor reached at the last update


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def factor(kind: str, shape: str, step, total, warmup=0, hold_end=0, cool=0, final=0.0):
    """The LR factor at update `step`; every argument but `kind` and `shape` may be a traced scalar."""
    s, w, total, final = _f32(step), _f32(warmup), _f32(total), _f32(final)
    # linear warmup reaching the peak at the end of update warmup - 1 (the first update is 1/warmup)
    warm = jnp.where(w > 0, jnp.minimum(1.0, (s + 1.0) / jnp.maximum(w, 1.0)), 1.0)
    if kind == "constant":
        return warm
    if kind in ("cosine", "linear"):  # from 1 at the end of warmup to `final` at the last update
        t = jnp.clip((s - w) / jnp.maximum(total - w - 1, 1.0), 0.0, 1.0)
        decay = 0.5 * (1 + jnp.cos(math.pi * t)) if kind == "cosine" else 1 - t
        return jnp.where(s < w, warm, final + (1 - final) * decay)
    if kind == "inverse_sqrt":  # sqrt(warmup / (step + 1)) after warmup (Vaswani et al.); no warmup: reference 1
        ref = jnp.maximum(w, 1.0)
        return jnp.where(s < w, warm, jnp.sqrt(ref / jnp.maximum(s + 1.0, ref)))
    if kind == "wsd":
        hold_end, cool = _f32(hold_end), _f32(cool)
        t = jnp.where(cool > 1, jnp.clip((s - hold_end) / jnp.maximum(cool - 1, 1.0), 0.0, 1.0),
                      (s >= hold_end) * 1.0)
        if shape == "linear":
            g = 1 - t
        elif shape == "cosine":
            g = 0.5 * (1 + jnp.cos(math.pi * t))
        elif shape == "1-sqrt":
            g = 1 - jnp.sqrt(t)
        else:
            raise ValueError(f"unknown cooldown shape {shape!r}")
        return jnp.where(s < w, warm, jnp.where(s >= hold_end, final + (1 - final) * g, 1.0))
    raise ValueError(f"optim.schedule: unknown schedule {kind!r}")


def _numbers(kind: str, total_steps: int, warmup_steps: int, cooldown_frac: float = 0.0,
             final_frac: float = 0.0) -> dict:
    """The schedule's numbers as factor() reads them; the wsd cooldown is rounded to whole updates here."""
    cool = int(round(cooldown_frac * total_steps)) if kind == "wsd" else 0
    return {"total": total_steps, "warmup": warmup_steps, "hold_end": total_steps - cool, "cool": cool,
            "final": final_frac if kind in ("cosine", "linear", "wsd") else 0.0}


def _schedule(kind: str, shape: str, numbers: dict) -> Schedule:
    return lambda step: factor(kind, shape, step, **numbers)


def constant(total_steps: int, warmup_steps: int = 0) -> Schedule:
    return _schedule("constant", "linear", _numbers("constant", total_steps, warmup_steps))


def cosine(total_steps: int, warmup_steps: int = 0, final_frac: float = 0.1) -> Schedule:
    """Cosine decay from 1 at the end of warmup to final_frac at the last step."""
    return _schedule("cosine", "linear", _numbers("cosine", total_steps, warmup_steps, final_frac=final_frac))


def linear(total_steps: int, warmup_steps: int = 0, final_frac: float = 0.0) -> Schedule:
    """Linear decay from 1 at the end of warmup to final_frac at the last step."""
    return _schedule("linear", "linear", _numbers("linear", total_steps, warmup_steps, final_frac=final_frac))


def inverse_sqrt(total_steps: int, warmup_steps: int = 0) -> Schedule:
    """1 during warmup's end, then sqrt(warmup / (step + 1)) (Vaswani et al.); no warmup means reference 1."""
    return _schedule("inverse_sqrt", "linear", _numbers("inverse_sqrt", total_steps, warmup_steps))


def wsd(total_steps: int, warmup_steps: int = 0, cooldown_frac: float = 0.2, final_frac: float = 0.0,
        shape: str = "linear") -> Schedule:
    """Warmup-stable-decay (Hägele et al. 2024): hold the peak, then cool down over the last cooldown_frac.

    The cooldown reaches final_frac at the last step; shapes: linear, cosine, 1-sqrt
    (`final + (1 - final) * (1 - sqrt(t))`).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown cooldown shape {shape!r}")
    return _schedule("wsd", shape, _numbers("wsd", total_steps, warmup_steps, cooldown_frac, final_frac))


def numbers(o: OptimConfig, total_steps: int) -> dict:
    """The configured schedule's numbers (what `stateful` keeps in the optimizer state)."""
    if o.schedule not in KINDS:
        raise ValueError(f"optim.schedule: unknown schedule {o.schedule!r}")
    return _numbers(o.schedule, total_steps, o.warmup_steps, o.cooldown_frac, o.final_lr_frac)


def from_config(o: OptimConfig, total_steps: int) -> Schedule:
    """The configured schedule as a factor of the peak LR."""
    return _schedule(o.schedule, o.cooldown_shape, numbers(o, total_steps))


class Stateful:
    """The configured schedule as an optax StatefulSchedule whose state carries its numbers (see the module doc).
    Written against the protocol, not imported from optax: launch/ imports this module and must stay light."""

    def __init__(self, o: OptimConfig, total_steps: int):
        self.kind, self.shape, self.numbers = o.schedule, o.cooldown_shape, numbers(o, total_steps)

    def init(self) -> ScheduleState:
        return state(self.numbers)

    def update(self, s: ScheduleState, **extra_args) -> ScheduleState:
        del extra_args
        top = jnp.iinfo(jnp.int32).max  # optax's safe_increment: saturate, never wrap
        return s._replace(count=jnp.where(s.count < top, s.count + 1, top).astype(jnp.int32))

    def __call__(self, s: ScheduleState, **extra_args):
        del extra_args
        return factor(self.kind, self.shape, s.count, s.total, s.warmup, s.hold_end, s.cool, s.final)


def state(nums: dict, count=0) -> ScheduleState:
    """A ScheduleState holding `nums` (from `numbers`) at update `count`."""
    return ScheduleState(count=jnp.asarray(count, jnp.int32), **{k: _f32(v) for k, v in nums.items()})
