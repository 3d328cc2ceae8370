"""Packing: K same-shape runs trained as ONE vmapped, jitted program, each writing its own run directory.

Members may differ only in vmappable values (testbed.vmappable: LR, weight decay, seed, init scales). Params
and optimizer states are stacked on a leading K axis; each member's peak LR and weight decay live in its
optimizer state (testbed.optim.init), so they are stacked with it, and each member reads its own data stream.
The loop is testbed.loop's, the same as a plain run's: rows on the same steps, a checkpoint at step s only once
rows <= s are on disk, eval and sigma_max on the same steps, the same summary keys (plus `packed: K`). A member
whose loss or gradient goes non-finite is marked diverged and frozen on device (its updates masked) while the
others go on.

Speed: on an accelerator one small model leaves the device idle and a pack costs about one model's step time.
On a 2-core CPU a vmapped pack of more than 2 small models ran slower than one at a time (activations spill out
of cache), so how many to pack, and how many pinned processes to run, is measured per machine by
launch/layout.py (`choose_layout`); `python -m testbed.pack CONFIG.yaml --pack K` is its timing worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from testbed import config, hardware, optim, spectral
from testbed.config import Config, ConfigError
from testbed.data import Source, make_source
from testbed.loop import Member, make_member, train_members
from testbed.model import init_params, param_info
from testbed.runstore import RunDir
from testbed.train import Evaluator, init_state, make_eval_step, make_train_step
from testbed.vmappable import VMAPPABLE, pack_conflict, pack_key, solo_reason

__all__ = ["VMAPPABLE", "pack_key", "make_pack_step", "train_pack", "time_pack"]


# --- the vmapped step ---------------------------------------------------------------------------------------

def make_pack_step(cfg: Config, tx: optax.GradientTransformation) -> Callable:
    """(state_K, alive_K, batch_KxAxBxLp1) -> (state_K, alive_K, metrics_K); dead members stay put."""
    step = make_train_step(cfg, tx)

    def member_step(state, alive, batch_AxBxLp1):
        new, metrics = step(state, batch_AxBxLp1)
        ok = alive & jnp.isfinite(metrics["train_loss"]) & jnp.isfinite(metrics["grad_norm"])
        return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state), ok, metrics

    return jax.vmap(member_step)


def stack(trees: list) -> Any:
    """K same-structure trees -> one tree with a leading K axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree_K, k: int) -> Any:
    """Member k's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[k], tree_K)


def template(cfgs: list[Config]) -> Config:
    """The config the shared program is traced from: member 0's, with the largest weight decay, so the optax
    chain decays whenever any member does (a member with weight_decay 0 then adds 0 * theta: exact). Each
    member's own peak LR and weight decay are in its optimizer state (testbed.optim.init)."""
    return dataclasses.replace(cfgs[0], optim=dataclasses.replace(
        cfgs[0].optim, weight_decay=max(c.optim.weight_decay for c in cfgs)))


class PackEvaluator:
    """Every member's held-out set through one vmapped eval program; rows are finished per member."""

    def __init__(self, cfg: Config, evaluators: list[Evaluator]):
        self.members = evaluators
        tokens_KxCxBxLp1 = np.stack([e.tokens_CxBxLp1 for e in evaluators])
        self.chunks = [jnp.asarray(tokens_KxCxBxLp1[:, c]) for c in range(tokens_KxCxBxLp1.shape[1])]
        self.fn = jax.jit(jax.vmap(make_eval_step(cfg)))

    def dispatch(self, params_K) -> list:
        return [self.fn(params_K, chunk_KxBxLp1) for chunk_KxBxLp1 in self.chunks]


class PackSigma:
    """sigma_max of every matrix of every member: spectral.SingularValues' program, vmapped over members."""

    def __init__(self, params):
        self.sv = spectral.SingularValues(params)
        self.fn = jax.jit(jax.vmap(self.sv.fn, in_axes=(0, None)))

    def dispatch(self, params_K) -> dict:
        flat = spectral.by_name(params_K)
        return self.fn({n: flat[n] for n in self.sv.names}, self.sv.vecs)


class PackProgram:
    """testbed.loop's device side for K same-shape members: their stacked states through one vmapped, jitted step
    on one device. A member whose loss or gradient goes non-finite is frozen on device (its updates masked)."""

    voting = False

    def __init__(self, ms: list[Member], tx: optax.GradientTransformation, cfg: Config, start: int):
        self.cfg, self.K = cfg, len(ms)
        self.state_K = stack([m.state for m in ms])
        self.alive_K = jnp.ones((self.K,), bool)
        params = member(self.state_K["params"], 0)
        self.info = param_info(params)
        self.param_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        self.batch_at = _batches(cfg, [m.source for m in ms])
        t0 = time.perf_counter()
        self.step_fn = jax.jit(make_pack_step(cfg, tx), donate_argnums=(0, 1)).lower(
            self.state_K, self.alive_K, self.batch_at(min(start, cfg.total_steps - 1))).compile()
        self.compile_s = time.perf_counter() - t0
        self.evaluators = [Evaluator(cfg, m.source) for m in ms]
        self.evaluator = PackEvaluator(cfg, self.evaluators)
        self.eval_params = optim.eval_params_fn(cfg, packed=True)
        sigma_every = cfg.train.eval_every if cfg.train.sigma_every is None else cfg.train.sigma_every
        self.sv = PackSigma(params) if sigma_every else None

    def step(self, batch, stop: bool):
        self.state_K, self.alive_K, metrics_K = self.step_fn(self.state_K, self.alive_K, batch)
        return metrics_K

    def dispatch_eval(self):
        return self.evaluator.dispatch(self.eval_params(self.state_K["opt_state"], self.state_K["params"]))

    def dispatch_sigma(self):
        return self.sv.dispatch(self.state_K["params"]) if self.sv is not None else None

    def host_rows(self, metrics_K, ev, sig) -> list[dict]:
        host = {k: np.asarray(v) for k, v in jax.device_get(metrics_K).items()}
        ev_host = [np.asarray(x) for x in ev] if ev is not None else None
        sig_host = jax.device_get(sig) if sig is not None else None
        return [{"metrics": {name: float(v[k]) for name, v in host.items()},
                 "eval": e.finish([x[k] for x in ev_host]) if ev_host is not None else None,
                 "sigma_max": {n: float(v[k]) for n, v in sig_host.items()} if sig_host is not None else None}
                for k, e in enumerate(self.evaluators)]

    def member_state(self, k: int):
        return member(self.state_K, k)

    def describe(self) -> dict:
        return {"packed": self.K}


# --- members and their run directories -----------------------------------------------------------------------

def train_pack(cfgs: list[Config], out_dirs: list[str | Path], progress: bool = True,
               log: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Trains (or resumes) every unfinished member of a pack; returns one summary per member, in order.

    Idempotent: completed and diverged members are skipped. Members whose latest checkpoints are at different
    steps are trained as one pack per resume step. SIGTERM/SIGUSR1/SIGUSR2 (testbed.preempt) or `should_stop()`
    turning true checkpoint every live member at the next step and return {'status': 'incomplete', 'steps': s}
    for it (no summary written), as testbed.train does.
    """
    if not cfgs or len(cfgs) != len(out_dirs):
        raise ValueError(f"train_pack: need as many out_dirs as configs (got {len(cfgs)} and {len(out_dirs)})")
    conflict = pack_conflict(cfgs)
    if conflict is not None:
        raise ConfigError(f"train-pack: the runs differ in {conflict}; within a pack only {', '.join(VMAPPABLE)} "
                          "may differ (train the others separately)")
    solo = next(((d, why) for d, c in zip(out_dirs, cfgs, strict=True) if (why := solo_reason(c))), None)
    if solo is not None:
        raise ConfigError(f"train-pack: {solo[0]}: {solo[1]}, which packs do not support (they train on one device, "
                          "without branching or kept checkpoint steps); train that run alone with testbed train")
    seen = hardware.select(cfgs[0])  # train.platform (not vmappable: equal within a pack)
    sources: dict[str, Source] = {}
    members = [make_member(c, d, sources=sources) for c, d in zip(cfgs, out_dirs, strict=True)]  # nothing written
    tmpl = template(cfgs)
    tx = optim.make_optimizer(tmpl, param_info(init_params(tmpl, jax.random.key(tmpl.seed))))

    def fresh_state(m: Member):
        return init_state(m.cfg, tx, init_params(m.cfg, jax.random.key(m.cfg.seed)))

    return train_members(members, fresh_state, lambda group, start: PackProgram(group, tx, tmpl, start),
                         packed=True, progress=progress, log=log, should_stop=should_stop, devices=seen)


def configs_of(run_dirs: list[str | Path]) -> list[Config]:
    """Each run directory's resolved config (what `testbed train-pack RUN_DIR...` trains); a ConfigError naming
    the first directory without one."""
    runs = [RunDir(d) for d in run_dirs]
    missing = [str(r.path) for r in runs if not r.has_config]
    if missing:
        raise ConfigError(f"train-pack: {missing[0]} has no config.yaml; each RUN_DIR must hold its resolved "
                          "config (testbed sweep writes them)")
    return [r.load_config() for r in runs]


def _batches(cfg: Config, sources: list[Source]) -> Callable[[int], np.ndarray]:
    """step -> int32 [K, grad_accum, micro, L + 1]; members sharing a source share one sampled batch."""
    A, micro, L = cfg.train.grad_accum, cfg.train.batch_size // cfg.train.grad_accum, cfg.data.seq_len

    def batch_at(step: int) -> np.ndarray:
        cache: dict[int, np.ndarray] = {}
        for s in sources:
            if id(s) not in cache:
                cache[id(s)] = s.train_batch(step, cfg.train.batch_size).reshape(A, micro, L + 1)
        return np.stack([cache[id(s)] for s in sources])

    return batch_at


# --- timing (the worker launch/layout.py measures layouts with) ----------------------------------------------

def pack_timer(cfg: Config, k: int) -> Callable[[float], dict]:
    """Compiles and warms up a pack of k members (k = 1: plain one-at-a-time training); returns window(s).

    window(duration_s) steps for duration_s, data included, reading each step's metrics while the next runs
    (as the training loop does), and returns the steady-state tokens/s of that window. Members get seeds
    0..k-1 (own init and data stream) and LRs from 1x to 2x the config's.
    """
    raw = config.to_dict(cfg)
    cfgs = [config.from_dict({**raw, "seed": i, "optim": {**raw["optim"], "lr": cfg.optim.lr * (1 + i / k)}})
            for i in range(k)]
    params = [init_params(c, jax.random.key(c.seed)) for c in cfgs]
    tx = optim.make_optimizer(cfg, param_info(params[0]))
    box = {"state": stack([init_state(c, tx, p) for c, p in zip(cfgs, params, strict=True)]),
           "alive": jnp.ones((k,), bool), "step": 0}
    batch_at = _batches(cfg, [make_source(c.data, c.model.vocab_size, c.seed) for c in cfgs])
    t0 = time.perf_counter()
    fn = jax.jit(make_pack_step(cfg, tx), donate_argnums=(0, 1)).lower(
        box["state"], box["alive"], batch_at(0)).compile()
    compile_s = time.perf_counter() - t0

    def run(duration_s: float) -> dict:
        state_K, alive_K, s0 = box["state"], box["alive"], box["step"]
        steps, prev, batch = 0, None, batch_at(s0)
        t_begin = time.time()
        while steps < 2 or time.time() - t_begin < duration_s:
            state_K, alive_K, metrics = fn(state_K, alive_K, batch)
            batch = batch_at(s0 + steps + 1)
            if prev is not None:
                jax.device_get(prev)
            prev, steps = metrics, steps + 1
        jax.device_get(prev)
        t_end = time.time()
        box.update(state=state_K, alive=alive_K, step=s0 + steps)
        tokens = steps * k * cfg.tokens_per_step
        return {"pack": k, "steps": steps, "tokens": tokens, "t_begin": t_begin, "t_end": t_end,
                "tokens_per_s": tokens / (t_end - t_begin), "compile_s": compile_s,
                "backend": jax.default_backend(), "pack_key": pack_key(cfg)}

    run(0.0)  # warm-up: two steps (allocation, caches)
    return run


def time_pack(cfg: Config, k: int, duration_s: float = 3.0) -> dict:
    """Steady-state tokens/s of a pack of k members over one window of duration_s (compile excluded)."""
    return pack_timer(cfg, k)(duration_s)


def _worker_main(argv: list[str] | None = None) -> None:
    """`python -m testbed.pack CONFIG --pack K`: compiles, then per stdin line 'go' prints one timed window's
    JSON (after printing 'ready'); any other line or EOF ends it. Concurrent workers so time the same window."""
    ap = argparse.ArgumentParser(prog="python -m testbed.pack", description=_worker_main.__doc__)
    ap.add_argument("config")
    ap.add_argument("--pack", type=int, default=1)
    ap.add_argument("--duration", type=float, default=3.0)
    args = ap.parse_args(argv)
    window = pack_timer(config.load(args.config), args.pack)
    while True:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        print(json.dumps(window(args.duration)), flush=True)


if __name__ == "__main__":
    _worker_main()
