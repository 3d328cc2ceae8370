"""Packing: K same-shape runs trained as ONE vmapped, jitted program, each writing its own run directory.

Members may differ only in vmappable values (testbed.vmappable: LR, weight decay, seed, init scales). Params
and optimizer states are stacked on a leading K axis, peak LR and weight decay are stacked `hparams` (the pure
step of testbed.train already takes them as arrays), and each member reads its own data stream. Per member the
loop keeps testbed.train's semantics: rows on the same steps, a checkpoint at step s only once rows <= s are on
disk, eval and sigma_max on the same steps, the same summary keys (plus `packed: K`). A member whose loss or
gradient goes non-finite is marked diverged and frozen on device (its updates masked) while the others go on.

Speed: on an accelerator one small model leaves the device idle and a pack costs about one model's step time.
On a 2-core CPU a vmapped pack of more than 2 small models ran slower than one at a time (activations spill out
of cache), so how many to pack, and how many pinned processes to run, is measured per machine by
launch/layout.py (`choose_layout`); `python -m testbed.pack CONFIG.yaml --pack K` is its timing worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from testbed import config as C
from testbed import schedules, shapes, spectral
from testbed.config import Config, ConfigError
from testbed.data import Source, make_source
from testbed.model import init_params
from testbed.optim import default_hparams, make_optimizer
from testbed.preempt import StopRequest
from testbed.runstore import RunDir

# testbed.train's checkpoint options, restore, divergence test and rate: a pack member is saved, resumed and
# summarized exactly as its one-by-one run would be.
from testbed.train import (
    Evaluator,
    _finite,
    _restore,
    init_state,
    make_eval_step,
    make_train_step,
    summarize,
)
from testbed.vmappable import VMAPPABLE, pack_conflict, pack_key, solo_reason

__all__ = ["VMAPPABLE", "pack_key", "make_pack_step", "train_pack", "time_pack"]


# --- the vmapped step ---------------------------------------------------------------------------------------

def make_pack_step(cfg: Config, tx: optax.GradientTransformation, schedule: schedules.Schedule) -> Callable:
    """(state_K, alive_K, batch_KxAxBxLp1, hparams_K) -> (state_K, alive_K, metrics_K); dead members stay put."""
    step = make_train_step(cfg, tx, schedule)

    def member_step(state, alive, batch_AxBxLp1, hparams):
        new, metrics = step(state, batch_AxBxLp1, hparams)
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
    chain decays whenever any member does (a member with weight_decay 0 then adds 0 * theta: exact)."""
    raw = C.to_dict(cfgs[0])
    raw["optim"]["weight_decay"] = max(c.optim.weight_decay for c in cfgs)
    return C.from_dict(raw)


def pack_hparams(cfgs: list[Config]) -> dict:
    """Each member's vmappable hyperparameters, stacked: {'lr': f32[K], 'weight_decay': f32[K]}."""
    return stack([default_hparams(c) for c in cfgs])


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


# --- members and their run directories -----------------------------------------------------------------------

@dataclass
class Member:
    """One run of the pack: its config, run directory, data stream, evaluator and checkpoint manager."""

    cfg: Config
    run: RunDir
    source: Source
    evaluator: Evaluator
    mngr: Any = None
    restored: Any = None  # the state restored from its newest readable checkpoint (None: starts at step 0)
    wall0: float = 0.0
    status: str | None = None  # None while training; completed | diverged once decided
    summary: dict | None = None


def _members(cfgs: list[Config], out_dirs: list[str | Path]) -> list[Member]:
    """Sources (shared by members with the same data and seed) and evaluators; raises before writing anything."""
    sources: dict[str, Source] = {}
    out = []
    for cfg, d in zip(cfgs, out_dirs, strict=True):
        key = json.dumps([C.to_dict(cfg)["data"], cfg.model.vocab_size, cfg.seed], sort_keys=True)
        if key not in sources:
            sources[key] = make_source(cfg.data, cfg.model.vocab_size, cfg.seed)
        src = sources[key]
        if src.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the data's vocabulary "
                              f"({src.vocab_size}); set model.vocab_size >= {src.vocab_size}")
        out.append(Member(cfg, RunDir(d), src, Evaluator(cfg, src)))
    return out


# --- the loop -----------------------------------------------------------------------------------------------

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
    members = _members(cfgs, out_dirs)
    for m in members:
        m.run.check_or_write_config(m.cfg)
    results: list[dict | None] = [None] * len(members)
    by_start: dict[int, list[int]] = {}
    tmpl = template(cfgs)
    for i, m in enumerate(members):
        done = m.run.read_summary()
        if done is not None and done.get("status") in ("completed", "diverged"):
            log(f"{m.run.path}: already {done['status']} at step {done['steps']}; nothing to do")
            results[i] = done
            continue
        p = init_params(m.cfg, jax.random.key(m.cfg.seed))  # the state's structure for the restore (as _train_group)
        m.mngr, restored, start = _restore(m.run, m.cfg, init_state(tmpl, make_optimizer(tmpl, p), p), log)
        m.restored = restored if start else None
        by_start.setdefault(start, []).append(i)
    if len(by_start) > 1:
        log(f"pack members resume from different steps ({sorted(by_start)}); training one pack per step")
    try:
        with StopRequest(also=should_stop) as stop:
            _train_groups(members, by_start, results, tmpl, progress, log, stop)
    finally:
        for m in members:
            if m.mngr is not None:
                m.mngr.close()
    return results


def _train_groups(members: list[Member], by_start: dict[int, list[int]], results: list, tmpl: Config,
                  progress: bool, log, stop: StopRequest) -> None:
    """One pack per resume step, lowest first; after a stop request, the rest are reported incomplete."""
    for start in sorted(by_start):
        idx = by_start[start]
        group = [members[i] for i in idx]
        if stop():
            for i in idx:
                results[i] = {"status": "incomplete", "steps": start}
            continue
        for i, s in zip(idx, _train_group_or_fail(group, tmpl, progress, log, stop), strict=True):
            results[i] = s


def _train_group_or_fail(group: list[Member], tmpl: Config, progress: bool, log, stop) -> list[dict]:
    """testbed.train's failure contract per member: an exception writes status failed and re-raises."""
    try:
        return _train_group(group, tmpl, progress, log, stop)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        for m in group:
            if m.status is None:
                m.run.write_summary({"status": "failed", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()})
        raise


def _train_group(ms: list[Member], cfg: Config, progress: bool, log, stop: StopRequest) -> list[dict]:
    """One vmapped program over members that resume from the same step; mirrors testbed.train._train_loop."""
    K, acc, total, tokens_per_step = len(ms), shapes.count(cfg), cfg.total_steps, cfg.tokens_per_step
    params = [init_params(m.cfg, jax.random.key(m.cfg.seed)) for m in ms]
    tx = make_optimizer(cfg, params[0])
    schedule = schedules.from_config(cfg.optim, total)
    state_K = stack([m.restored if m.restored is not None else init_state(cfg, tx, p)
                     for m, p in zip(ms, params, strict=True)])
    for m in ms:
        m.restored = None
    start = int(state_K["step"][0])
    for m in ms:
        rows = m.run.truncate_metrics(start)
        m.wall0 = rows[-1]["wall_s"] if rows else 0.0
    if start:
        log(f"resuming pack of {K} ({', '.join(str(m.run.path) for m in ms)}) from step {start}")
    hparams_K = pack_hparams([m.cfg for m in ms])
    alive_K = jnp.ones((K,), bool)
    batch_at = _batches(cfg, [m.source for m in ms])

    t0 = time.perf_counter()
    step_fn = jax.jit(make_pack_step(cfg, tx, schedule), donate_argnums=(0, 1)).lower(
        state_K, alive_K, batch_at(min(start, total - 1)), hparams_K).compile()
    compile_s = time.perf_counter() - t0
    evaluator = PackEvaluator(cfg, [m.evaluator for m in ms])
    sigma_every = cfg.train.eval_every if cfg.train.sigma_every is None else cfg.train.sigma_every
    sv = PackSigma(params[0]) if sigma_every else None

    import orbax.checkpoint as ocp

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True, desc=f"pack of {K}")

    t_start = time.perf_counter()
    clock = {"t": t_start, "tok": start * tokens_per_step}

    def finish(step: int, metrics_K, ev, sig) -> list[tuple[Member, dict]]:
        """Step's device metrics (and eval) as one row per live member; blocks until they are ready."""
        host = {k: np.asarray(v) for k, v in jax.device_get(metrics_K).items()}
        ev_host = [np.asarray(x) for x in ev] if ev is not None else None
        sig_host = jax.device_get(sig) if sig is not None else None
        now = time.perf_counter()
        tokens = step * tokens_per_step
        rate = (tokens - clock["tok"]) / max(now - clock["t"], 1e-9)
        clock.update(t=now, tok=tokens)
        out = []
        for k, m in enumerate(ms):
            if m.status is not None:
                continue
            row = {"step": step, "tokens": tokens, "flops": tokens * acc.flops_per_token,
                   **{name: float(v[k]) for name, v in host.items()}, "tokens_per_s": rate,
                   "wall_s": m.wall0 + now - t_start}
            epochs = m.source.epochs_at(tokens)
            if epochs is not None:
                row["epochs"] = epochs
            if ev_host is not None:
                row.update(m.evaluator.finish([x[k] for x in ev_host]))
                if m.evaluator.eval.entropy is not None:
                    row["eval_excess"] = row["eval_loss"] - m.evaluator.eval.entropy
            if sig_host is not None:
                row["sigma_max"] = {n: float(v[k]) for n, v in sig_host.items()}
            out.append((m, row))
        return out

    def keep(row: dict) -> bool:
        return (row["step"] % cfg.train.log_every == 0 or row["step"] == total or "eval_loss" in row
                or not _finite(row))

    def record(done: list[tuple[Member, dict]]) -> None:
        """Appends rows per member; a member with a non-finite row is diverged and its summary written now."""
        for m in ms:
            m.run.append_metrics([r for mm, r in done if mm is m and keep(r)])
        for m, r in done:
            if m.status is None and not _finite(r):
                m.status = "diverged"
                m.summary = _summary(m, "diverged", start, params[0], acc, compile_s, K, log)

    def save(step: int) -> None:
        for k, m in enumerate(ms):
            if m.status is None:
                m.mngr.save(step, args=ocp.args.StandardSave(member(state_K, k)))

    inflight = None  # (step, metrics, eval, sigma) dispatched but not yet read
    saved, stopped, step = start, False, start
    batch = batch_at(start) if start < total else None
    for i in range(start, total):
        if stop():
            stopped = True
            break
        step = i + 1
        state_K, alive_K, metrics_K = step_fn(state_K, alive_K, batch, hparams_K)
        is_eval = step % cfg.train.eval_every == 0 or step == total
        ev = evaluator.dispatch(state_K["params"]) if is_eval else None
        is_sigma = sv is not None and (step % sigma_every == 0 or step == total)
        sig = sv.dispatch(state_K["params"]) if is_sigma else None
        if step < total:
            batch = batch_at(step)  # host-side data work overlaps the device step
        done = finish(*inflight) if inflight is not None else []  # step - 1, read while step runs
        inflight = (step, metrics_K, ev, sig)
        is_ckpt = step % cfg.train.checkpoint_every == 0 or step == total
        if is_ckpt:  # a checkpoint at step s is only saved once rows <= s are on disk
            done += finish(*inflight)
            inflight = None
        record(done)
        if done and bar is not None:
            bar.update(done[-1][1]["step"] - bar.n)
            bar.set_postfix(loss=f"{min(r['train_loss'] for _, r in done):.4f}", refresh=False)
        if all(m.status is not None for m in ms):
            break
        if is_ckpt:
            save(step)
            saved = step
    if stopped:  # checkpoint where we are, so a re-run resumes here
        if inflight is not None:
            record(finish(*inflight))
        if step > saved:
            save(step)
        log(f"pack of {K} stopped by {stop.describe()} at step {step}; checkpointed, the same command resumes")
    for m in ms:
        m.mngr.wait_until_finished()
    if bar is not None:
        bar.close()
    for m in ms:
        if m.status is None and not stopped:
            m.status = "completed"
            m.summary = _summary(m, "completed", start, params[0], acc, compile_s, K, log)
    return [m.summary if m.summary is not None else {"status": "incomplete", "steps": step} for m in ms]


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


def _summary(m: Member, status: str, start: int, params, acc, compile_s: float, packed: int, log) -> dict:
    """testbed.train's summary.json for one member (same keys), plus `packed`; written atomically."""
    rows = m.run.read_metrics()
    summary = summarize(m.cfg, rows, status, start, params, acc, compile_s, m.evaluator.eval.entropy, m.source.meta)
    rate = summary["tokens_per_s"]
    summary.update(packed=packed, pack_tokens_per_s=rate * packed if rate is not None else None)
    m.run.write_summary(summary)
    log(f"{m.run.path}: {status} at step {summary['steps']} (packed {packed}), train loss "
        f"{summary['final_train_loss']}, eval loss {summary['final_eval_loss']}")
    return summary


# --- timing (the worker launch/layout.py measures layouts with) ----------------------------------------------

def pack_timer(cfg: Config, k: int) -> Callable[[float], dict]:
    """Compiles and warms up a pack of k members (k = 1: plain one-at-a-time training); returns window(s).

    window(duration_s) steps for duration_s, data included, reading each step's metrics while the next runs
    (as the training loop does), and returns the steady-state tokens/s of that window. Members get seeds
    0..k-1 (own init and data stream) and LRs from 1x to 2x the config's.
    """
    raw = C.to_dict(cfg)
    cfgs = [C.from_dict({**raw, "seed": i, "optim": {**raw["optim"], "lr": cfg.optim.lr * (1 + i / k)}})
            for i in range(k)]
    params = [init_params(c, jax.random.key(c.seed)) for c in cfgs]
    tx = make_optimizer(cfg, params[0])
    schedule = schedules.from_config(cfg.optim, max(cfg.total_steps, 10**6))
    box = {"state": stack([init_state(cfg, tx, p) for p in params]), "alive": jnp.ones((k,), bool), "step": 0}
    hparams_K = pack_hparams(cfgs)
    batch_at = _batches(cfg, [make_source(c.data, c.model.vocab_size, c.seed) for c in cfgs])
    t0 = time.perf_counter()
    fn = jax.jit(make_pack_step(cfg, tx, schedule), donate_argnums=(0, 1)).lower(
        box["state"], box["alive"], batch_at(0), hparams_K).compile()
    compile_s = time.perf_counter() - t0

    def run(duration_s: float) -> dict:
        state_K, alive_K, s0 = box["state"], box["alive"], box["step"]
        steps, prev, batch = 0, None, batch_at(s0)
        t_begin = time.time()
        while steps < 2 or time.time() - t_begin < duration_s:
            state_K, alive_K, metrics = fn(state_K, alive_K, batch, hparams_K)
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
    window = pack_timer(C.load(args.config), args.pack)
    while True:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        print(json.dumps(window(args.duration)), flush=True)


if __name__ == "__main__":
    _worker_main()
