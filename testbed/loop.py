"""The one training loop: K members (K = 1 for `testbed train`, K > 1 for a pack) stepped by one compiled program.

Everything a run directory sees happens here, the same way for a plain run and for every member of a pack:
writing or checking config.yaml, skipping finished runs, restoring the newest readable checkpoint (or a branch
parent's), the step loop (step t's metrics are read while step t+1 runs; eval and sigma_max dispatched
asynchronously), logged rows, a checkpoint at step s only once rows <= s are on disk, a member whose loss or
gradient goes non-finite marked diverged (its summary written at once; in a pack the others go on), SIGTERM /
SIGUSR1 / SIGUSR2 checkpointing where the run is, a full disk as one line (no summary), any other error as status
failed, and summary.json written last.

What differs between a plain run and a pack is the device side, a `Program` (testbed.train.SingleProgram: one
state, optionally on a device mesh over several hosts; testbed.pack.PackProgram: K states vmapped).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from testbed import branch, checkpoints, faults, hardware, parametrization, provenance, shapes, spectral, trackers
from testbed.config import Config, ConfigError, to_dict
from testbed.data import Source, make_source
from testbed.optim import group_table
from testbed.preempt import StopRequest
from testbed.runstore import RunDir, RunDirError, storage_error


@dataclass
class Member:
    """One run of the loop: its config, run directory, data stream, and how far it got."""

    cfg: Config
    run: RunDir
    source: Source
    state: Any = None  # the restored (or fresh) train state until a program takes it
    start: int = 0  # the step it resumes from
    resumed: bool = False  # restored from its own checkpoint (not fresh, not a branch)
    mngr: Any = None  # its checkpoint manager
    wall0: float = 0.0  # wall_s already spent before this resume
    status: str | None = None  # None while training; completed | diverged | failed once decided
    summary: dict | None = None
    trackers: list = field(default_factory=list)  # testbed.trackers mirroring metrics.jsonl (process 0 only)

    def append_rows(self, rows: list[dict]) -> None:
        """metrics.jsonl first (the source of truth), then the live views."""
        self.run.append_metrics(rows)
        for t in self.trackers:
            t.log(rows)


class Program(Protocol):
    """The device side of the loop for a group of members that resume from the same step."""

    compile_s: float
    voting: bool  # several processes: each step's metrics carry a stop vote so they stop at the same step

    def batch_at(self, step: int) -> Any: ...
    def step(self, batch, stop: bool) -> Any: ...  # advances the state; returns device metrics
    def dispatch_eval(self) -> Any: ...
    def dispatch_sigma(self) -> Any: ...  # None when sigma_max is not logged
    def host_rows(self, metrics, ev, sig) -> list[dict]: ...  # blocks; per member {metrics, eval, sigma_max}
    def member_state(self, k: int) -> Any: ...
    def describe(self) -> dict: ...  # extra summary keys (mesh, packed)

    info: Any  # testbed.model.param_info of one member's params (the summary's parameter groups)
    param_shapes: Any  # one member's params as shapes


def make_member(cfg: Config, out: str | Path, run: RunDir | None = None,
                sources: dict[str, Source] | None = None) -> Member:
    """A member with its data source (shared through `sources` by members with equal data and seed); raises
    ConfigError before anything is written."""
    key = json.dumps([to_dict(cfg)["data"], cfg.model.vocab_size, cfg.seed], sort_keys=True)
    sources = {} if sources is None else sources
    if key not in sources:
        sources[key] = make_source(cfg.data, cfg.model.vocab_size, cfg.seed)
    source = sources[key]
    if source.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the data's vocabulary "
                          f"({source.vocab_size}); set model.vocab_size >= {source.vocab_size}")
    return Member(cfg, run if run is not None else RunDir(out), source)


def train_members(members: list[Member], init_state: Callable[[Member], Any],
                  build: Callable[[list[Member], int], Program], *, packed: bool, progress: bool,
                  log: Callable[[str], None], should_stop: Callable[[], bool] | None,
                  primary: bool = True, devices: dict | None = None) -> list[dict]:
    """Trains (or resumes) every unfinished member; one summary (or {'status': 'incomplete', ...}) per member.

    init_state(member) is a member's fresh state, placed where the program wants it (restores read shapes and
    shardings from it); build(group, start) compiles the program for members resuming from `start`. Members whose
    checkpoints are at different steps train as one program per resume step, lowest first. `devices`
    (testbed.hardware.devices: platform, device kind and count, processes) goes into every summary.
    """
    for m in members:
        trackers.check_installed(m.cfg)
    for m in members:
        _write_config(m, _where(members), devices)  # may raise ConfigError (another config there): before output
    if devices is not None:
        announce(members[0].run.path if len(members) == 1 else f"pack of {len(members)}", devices, log)
    results: list[dict | None] = [None] * len(members)
    for i, m in enumerate(members):
        done = m.run.read_summary()
        if done is not None and done.get("status") in ("completed", "diverged"):
            log(f"{m.run.path}: already {done['status']} at step {done['steps']}; nothing to do")
            results[i], m.status = done, done["status"]
        elif primary:
            m.run.remove_stale_temps()
    todo = [m for m in members if m.status is None]
    active = todo  # the members an error is blamed on: all while restoring, then the group in training
    managers: list = []  # every checkpoint manager, settled here if anything raises
    try:
        try:
            with StopRequest(also=should_stop) as stop:
                by_start = _restore(todo, init_state, managers, log)
                if len(by_start) > 1:
                    log(f"pack members resume from different steps ({sorted(by_start)}); training one pack per step")
                for n, start in enumerate(sorted(by_start)):
                    active = by_start[start]
                    if n and stop():  # stopped during an earlier group: the later ones stay where they are
                        for m in active:
                            m.summary = {"status": "incomplete", "steps": start}
                        continue
                    _begin(active, start, packed, log)
                    for m in active if primary else ():
                        m.trackers = trackers.open_all(m.cfg, m.run, start, m.resumed)
                    _train_group(active, build(active, start), start, progress, log, stop, devices or {})
        finally:
            checkpoints.settle(managers)
            for m in todo:
                for t in m.trackers:
                    t.close()
    except (KeyboardInterrupt, RunDirError):
        raise  # no summary: nothing about the run itself failed (unreadable checkpoints, a full disk)
    except Exception as e:
        if storage_error(e):  # no summary: the run is incomplete and resumes once there is space
            raise checkpoints.storage_failure(_where(todo or members), e) from e
        for m in active:
            if m.status is None:
                m.run.write_summary({"status": "failed", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()})
        raise
    return [results[i] if results[i] is not None else m.summary for i, m in enumerate(members)]


def announce(where: str | Path, seen: dict, log: Callable[[str], None]) -> None:
    """The line every run starts with (what it trains on), and a warning when accelerators go unused."""
    log(f"{where}: training on {hardware.describe(seen)}")
    warning = hardware.hint(seen)
    if warning:
        log(f"WARNING: {warning}")


def _where(ms: list[Member]) -> str:
    """How a storage error names the run directories: '--out RUN_DIR' for one run, the list for a pack."""
    if len(ms) == 1:
        return f"--out {ms[0].run.path}"
    return f"run directories {', '.join(str(m.run.path) for m in ms)}"


def _write_config(m: Member, where: str, devices: dict | None) -> None:
    try:
        m.run.check_or_write_config(m.cfg, devices)
    except OSError as e:
        if storage_error(e):
            raise checkpoints.storage_failure(where, e) from e
        raise


def _restore(todo: list[Member], init_state, managers: list, log) -> dict[int, list[Member]]:
    """Each member's newest readable checkpoint (or, fresh with train.branch_from, its parent's), grouped by step."""
    by_start: dict[int, list[Member]] = {}
    for m in todo:
        state = init_state(m)
        m.mngr, m.state, m.start = checkpoints.restore_latest(m.run, m.cfg, state, log)
        managers.append(m.mngr)
        m.resumed = m.start > 0
        if m.start == 0 and m.cfg.train.branch_from is not None:  # fresh branch: the parent's state and rows to s
            m.state, m.start = branch.restore(m.cfg, m.run, m.state)
            log(f"branching {m.run.path} from {branch.parent_dir(m.cfg, m.run.path)} at step {m.start}")
        by_start.setdefault(m.start, []).append(m)
    return by_start


def _begin(ms: list[Member], start: int, packed: bool, log) -> None:
    """Drops rows past the resume step (a resume redoes them) and says where the group resumes from."""
    for m in ms:
        rows = m.run.truncate_metrics(start)
        m.wall0 = rows[-1]["wall_s"] if rows else 0.0
    if start and packed:
        log(f"resuming pack of {len(ms)} ({', '.join(str(m.run.path) for m in ms)}) from step {start}")
    elif len(ms) == 1 and ms[0].resumed:
        log(f"resuming {ms[0].run.path} from step {start}")


class _Clock:
    """tokens/s between consecutive finished rows, and each member's wall_s across resumes."""

    def __init__(self, start_tokens: int):
        self.t0 = self.t = time.perf_counter()
        self.tokens = start_tokens

    def tick(self, tokens: int) -> tuple[float, float]:
        now = time.perf_counter()
        rate = (tokens - self.tokens) / max(now - self.t, 1e-9)
        self.t, self.tokens = now, tokens
        return rate, now - self.t0


def _train_group(ms: list[Member], program: Program, start: int, progress: bool, log, stop: StopRequest,
                 devices: dict) -> None:
    """The step loop for members resuming from `start`; sets each member's status and summary."""
    for m in ms:
        m.state = None  # the program holds the states now
    _GroupLoop(ms, program, start, progress, log, stop, devices).run()


class _GroupLoop:
    """One group's steps: dispatch step t, read step t-1's metrics while it runs, log, checkpoint, stop."""

    def __init__(self, ms: list[Member], program: Program, start: int, progress: bool, log, stop: StopRequest,
                 devices: dict):
        self.ms, self.program, self.start, self.log, self.stop = ms, program, start, log, stop
        self.devices = devices
        self.cfg = ms[0].cfg
        self.total, self.tokens_per_step = self.cfg.total_steps, self.cfg.tokens_per_step
        self.acc = shapes.count(self.cfg)
        self.bar = _progress_bar(self.total, start, len(ms)) if progress else None
        self.clock = _Clock(start * self.tokens_per_step)
        self.stopping = False  # from the signal flag (one process) or from the processes' vote (several)

    def finish(self, step: int, metrics, ev, sig) -> list[tuple[Member, dict]]:
        """Step's device metrics (and eval, sigma_max) as one row per live member; blocks until ready."""
        host = self.program.host_rows(metrics, ev, sig)
        tokens = step * self.tokens_per_step
        rate, elapsed = self.clock.tick(tokens)
        out = []
        for m, part in zip(self.ms, host, strict=True):
            self.stopping = self.stopping or bool(part["metrics"].pop("stop_vote", 0.0))
            if m.status is not None:
                continue
            row = {"step": step, "tokens": tokens, "flops": tokens * self.acc.flops_per_token, **part["metrics"],
                   "tokens_per_s": rate, "wall_s": m.wall0 + elapsed}
            epochs = m.source.epochs_at(tokens)
            if epochs is not None:
                row["epochs"] = epochs
            if part.get("eval") is not None:
                row.update(part["eval"])
                entropy = m.source.eval_set().entropy
                if entropy is not None:
                    row["eval_excess"] = row["eval_loss"] - entropy
            if part.get("sigma_max") is not None:
                row["sigma_max"] = part["sigma_max"]
            out.append((m, row))
        return out

    def keep(self, row: dict) -> bool:
        """Rows written to metrics.jsonl: every log_every-th, the last, evals, and any non-finite one."""
        return (row["step"] % self.cfg.train.log_every == 0 or row["step"] == self.total or "eval_loss" in row
                or not finite(row))

    def record(self, done: list[tuple[Member, dict]]) -> None:
        """Appends rows per member; a member with a non-finite row is diverged and its summary written now."""
        for m in self.ms:
            m.append_rows([r for mm, r in done if mm is m and self.keep(r)])
        for m, r in done:
            if m.status is None and not finite(r):
                m.status = "diverged"
                _finalize(m, self.program, self.start, self.acc, self.log, self.devices)
        if done and self.bar is not None:
            last = [r for _, r in done if r["step"] == done[-1][1]["step"]]
            self.bar.update(last[0]["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{min(r['train_loss'] for r in last):.4f}",
                                 tok_s=f"{last[0]['tokens_per_s'] * len(last):.0f}", refresh=False)

    def save(self, step: int) -> None:
        for k, m in enumerate(self.ms):
            if m.status is None:
                checkpoints.save(m.mngr, step, self.program.member_state(k))

    def run(self) -> None:
        tr, total, program = self.cfg.train, self.total, self.program
        sigma_every = tr.eval_every if tr.sigma_every is None else tr.sigma_every
        keep_steps = set(tr.checkpoint_steps)  # saved, kept and evaluated (branch points)
        inflight = None  # (step, metrics, eval, sigma) dispatched but not yet read
        batch = program.batch_at(self.start) if self.start < total else None
        step = saved = self.start
        for i in range(self.start, total):
            self.stopping = self.stopping or (not program.voting and self.stop())
            if self.stopping:
                break
            step = i + 1
            metrics = program.step(batch, self.stop() if program.voting else False)
            faults.point("step", at=step)
            is_eval = step % tr.eval_every == 0 or step == total or step in keep_steps
            ev = program.dispatch_eval() if is_eval else None
            if is_eval:
                faults.point("eval", at=step)
            is_sigma = sigma_every and (step % sigma_every == 0 or step == total)
            sig = program.dispatch_sigma() if is_sigma else None
            if step < total:
                batch = program.batch_at(step)  # host-side data work overlaps the device step
            done = self.finish(*inflight) if inflight is not None else []  # step - 1, read while step runs
            inflight = (step, metrics, ev, sig)
            is_ckpt = step % tr.checkpoint_every == 0 or step == total or step in keep_steps
            if is_ckpt:  # a checkpoint at step s is only saved once rows <= s are on disk
                done += self.finish(*inflight)
                inflight = None
            self.record(done)
            if all(m.status is not None for m in self.ms):
                break
            if is_ckpt:
                self.save(step)
                faults.point("checkpoint", at=step)
                saved = step
        self.end(step, saved, inflight)

    def end(self, step: int, saved: int, inflight) -> None:
        """Preempted: rows in flight, then a checkpoint at this step and no summary (the same command resumes).
        Else: checkpoints committed, then each live member's summary, written last."""
        preempted = self.stopping and step < self.total and any(m.status is None for m in self.ms)
        if preempted:
            if inflight is not None:
                self.record(self.finish(*inflight))
            if step > saved:
                self.save(step)
        for m in self.ms:
            m.mngr.wait_until_finished()
        if self.bar is not None:
            self.bar.close()
        faults.point("finalize")
        if preempted:
            who = f"pack of {len(self.ms)}" if self.program.describe().get("packed") else str(self.ms[0].run.path)
            self.log(f"{who}: stopped by {self.stop.describe()} at step {step}; checkpointed, the same command "
                     "resumes")
        for m in self.ms:
            if m.status is None and not preempted:
                m.status = "completed"
                _finalize(m, self.program, self.start, self.acc, self.log, self.devices)
            elif m.status is None:
                m.summary = {"status": "incomplete", "steps": step}


def _progress_bar(total: int, start: int, k: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True,
                desc=f"pack of {k}" if k > 1 else None)


def _finalize(m: Member, program: Program, start: int, acc: shapes.Accounting, log, devices: dict) -> None:
    """summary.json for a decided member (completed or diverged), written atomically; logged."""
    extra = {**devices, **program.describe(), "provenance": provenance.collect(devices)}
    summary = {**summarize(m.cfg, m.run.read_metrics(), m.status, start, program.info, program.param_shapes, acc,
                           program.compile_s, m.source.eval_set().entropy, m.source.meta), **extra}
    if extra.get("packed"):
        rate = summary["tokens_per_s"]
        summary["pack_tokens_per_s"] = rate * extra["packed"] if rate is not None else None
    m.run.write_summary(summary)
    m.summary = summary
    packed = f" (packed {extra['packed']})" if extra.get("packed") else ""
    log(f"{m.run.path}: {m.status} at step {summary['steps']}{packed}, train loss {summary['final_train_loss']}, "
        f"eval loss {summary['final_eval_loss']}")


def summarize(cfg: Config, rows: list[dict], status: str, start: int, info, params, acc: shapes.Accounting,
              compile_s: float, entropy: float | None, data_meta: dict) -> dict:
    """summary.json's keys from a run's metrics rows (the same for a plain run and a pack member)."""
    last = rows[-1] if rows else {}
    evals = [r for r in rows if "eval_loss" in r]
    last_eval = evals[-1] if evals else {}
    groups = group_table(cfg, info, params)
    sigmas = [r["sigma_max"] for r in rows if "sigma_max" in r]
    labels = {name: i.group for name, i in spectral.by_name(info).items()}
    return {
        "status": status,
        "steps": last.get("step", start),
        "tokens": last.get("tokens", start * cfg.tokens_per_step),
        "flops": last.get("flops", 0),
        "final_train_loss": last.get("train_loss"),
        "final_eval_loss": last_eval.get("eval_loss"),
        "final_eval_loss_se": last_eval.get("eval_loss_se"),
        "data_entropy": entropy,
        **({"final_eval_bpb": last_eval["eval_bpb"]} if "eval_bpb" in last_eval else {}),
        **acc.as_dict(),
        "compile_s": compile_s,
        "tokens_per_s": _median_rate(rows),
        "parametrization": parametrization.describe(cfg),
        "param_groups": groups,  # per group: effective peak LR, coupled lambda, eps, tau_iter = 1/(eta*lambda)
        **({"final_sigma_max": sigmas[-1],
            "final_sigma_normalized": spectral.normalized_sigma(cfg, sigmas[-1], labels, groups)} if sigmas else {}),
        "wall_s": last.get("wall_s"),
        "data": data_meta,
    }


def finite(row: dict) -> bool:
    """A row whose loss and gradient norm are finite (else the run diverged)."""
    return math.isfinite(row["train_loss"]) and math.isfinite(row["grad_norm"])


def _median_rate(rows: list[dict]) -> float | None:
    """Steady-state tokens/s: the median of logged rates, robust to the first step's warm-up."""
    rates = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    return float(np.median(rates)) if rates else None
