"""Branching: a fresh run starts from another run's checkpoint (WSD cooldowns branched from one constant-LR run).

A run with `train.branch_from` (the parent's run directory) and `train.branch_step` s, that has no checkpoint of its
own yet, restores params, optimizer state and step from the parent's checkpoint at s, copies the parent's metrics
rows with step <= s into its own metrics.jsonl, and trains on with its own schedule. So its curve up to s IS the
parent's, which holds only if the two runs compute the same thing up to s: every config key equal except the
run's length, logging and the schedule, and the schedules equal step by step before s (checked here).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import yaml

from testbed import checkpoints, optim, schedules
from testbed.config import Config, ConfigError, identity
from testbed.runstore import RunDir, config_diff

# May differ between parent and child: how long, how often to log/evaluate/checkpoint, and the schedule's shape
# (checked numerically up to the branch step instead).
FREE_KEYS = ("train.steps", "train.tokens", "train.eval_every", "train.log_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.checkpoint_steps", "train.sigma_every", "train.branch_from",
             "train.branch_step", "optim.schedule", "optim.cooldown_frac", "optim.cooldown_shape",
             "optim.final_lr_frac")


def parent_dir(cfg: Config, run_path: str | Path) -> Path:
    """train.branch_from resolved: absolute as given, else relative to the run directory's parent folder."""
    p = Path(cfg.train.branch_from)
    return p if p.is_absolute() else Path(run_path).absolute().parent / p


def _comparable(cfg: Config) -> dict:
    """The identity minus FREE_KEYS: what must be equal for the child to continue the parent's computation."""
    d = identity(cfg)
    for key in FREE_KEYS:
        section, name = key.split(".")
        d[section].pop(name, None)
    return d


def _lr_factors(cfg: Config, steps: int) -> np.ndarray:
    """The schedule's LR factor at updates 0..steps-1 (update s-1 produces step s's params)."""
    f = jax.jit(schedules.from_config(cfg.optim, cfg.total_steps))  # one program, not one per eager op
    return np.asarray(jax.device_get(f(np.arange(steps, dtype=np.int32))), np.float64)


def check_parent(cfg: Config, run_path: str | Path) -> RunDir:
    """The parent run, checked: same computation up to branch_step, and a checkpoint there. ConfigError if not."""
    parent, s = RunDir(parent_dir(cfg, run_path)), cfg.train.branch_step
    where = f"train.branch_from {cfg.train.branch_from!r} ({parent.path})"
    if not parent.has_config:
        raise ConfigError(f"{where}: no run directory with a config.yaml there; branch_from is the parent's run "
                            "directory, relative to this run's folder (in a sweep directory: the parent's run id)")
    try:
        pcfg = parent.load_config()
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"{where}: its config.yaml cannot be read ({e})") from None
    diff = config_diff(_comparable(pcfg), _comparable(cfg))
    if diff:
        raise ConfigError(f"{where}: the parent computes something else ({diff}); a branch may differ only in "
                            f"{', '.join(FREE_KEYS)}")
    if s > pcfg.total_steps:
        raise ConfigError(f"train.branch_step: {s} is past the parent's {pcfg.total_steps} steps ({parent.path})")
    lr_parent, lr_child = _lr_factors(pcfg, s), _lr_factors(cfg, s)
    if not np.allclose(lr_parent, lr_child, rtol=1e-6, atol=1e-9):
        i = int(np.argmax(~np.isclose(lr_parent, lr_child, rtol=1e-6, atol=1e-9)))
        raise ConfigError(f"optim.schedule: this run's LR factor at update {i} is {lr_child[i]:.6g}, the parent's "
                            f"{lr_parent[i]:.6g}; before train.branch_step={s} the schedules must agree (e.g. a "
                            "constant-LR parent and a wsd child whose cooldown starts at the branch step, with the "
                            "same warmup)")
    steps = checkpoints.saved_steps(parent)
    if s not in steps:
        status = parent.status()
        raise ConfigError(f"train.branch_step: the parent ({parent.path}, {status}) has no checkpoint at step {s} "
                            f"(it has {sorted(steps) or 'none'}); train the parent first, with {s} in its "
                            "train.checkpoint_steps so it is kept")
    return parent


def restore(cfg: Config, run: RunDir, state: dict) -> tuple[dict, int]:
    """The parent's state at branch_step (restored onto `state`'s shapes and shardings), its rows copied to `run`."""
    parent, s = check_parent(cfg, run.path), cfg.train.branch_step
    state = checkpoints.read_step(parent, s, state)
    state = {**state, "opt_state": optim.with_schedule(state["opt_state"], cfg)}  # the parent's count, our schedule
    run.truncate_metrics(0)  # a fresh run: drop rows of an attempt that died before its first checkpoint
    run.append_metrics([r for r in parent.read_metrics() if r.get("step", 0) <= s])
    return state, s
