"""The pure train step, eval, and the loop that drives them and writes the run directory.

`make_train_step` returns a pure function (state, batch, hparams) -> (state, metrics): no Python state,
no host I/O, hyperparameters as arrays, so it can be jitted with donated buffers, vmapped over
hyperparameters and sharded over a mesh. The loop around it reads step t-1's metrics while step t runs.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from testbed import branch, faults, parametrization, schedules, shapes, sharding, spectral
from testbed.config import Config, ConfigError
from testbed.data import Source, make_source
from testbed.model import Transformer, init_params
from testbed.optim import default_hparams, group_labels, group_table, inject, make_optimizer
from testbed.preempt import StopRequest
from testbed.runstore import STORAGE_MESSAGES, RunDir, RunDirError, StorageError, storage_error

TrainState = dict  # {"params": tree, "opt_state": optax state, "step": int32 scalar}


def token_nll(params, tokens_BxLp1, cfg: Config):
    """Per-token next-token negative log-likelihood and log-partition, in float32."""
    inputs_BxL, targets_BxL = tokens_BxLp1[:, :-1], tokens_BxLp1[:, 1:]
    logits_BxLxV = Transformer(cfg).apply({"params": params}, inputs_BxL)
    logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return logz_BxL - target_logit_BxL, logz_BxL


def loss_fn(params, tokens_BxLp1, cfg: Config):
    """Mean next-token cross-entropy (+ z-loss); returns (loss, cross-entropy)."""
    nll_BxL, logz_BxL = token_nll(params, tokens_BxLp1, cfg)
    ce = jnp.mean(nll_BxL)
    loss = ce + cfg.model.z_loss * jnp.mean(logz_BxL**2) if cfg.model.z_loss else ce
    return loss, ce


def make_train_step(cfg: Config, tx: optax.GradientTransformation, schedule: schedules.Schedule) -> Callable:
    """The pure step. batch: int32 [grad_accum, micro_batch, seq_len + 1]."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch_AxBxLp1, hparams: dict):
        params = state["params"]
        if batch_AxBxLp1.shape[0] == 1:
            (loss, ce), grads = grad_fn(params, batch_AxBxLp1[0], cfg)
        else:
            def micro(carry, tokens_BxLp1):
                (l, c), g = grad_fn(params, tokens_BxLp1, cfg)
                return jax.tree.map(jnp.add, carry, (l, c, g)), None

            zeros = (jnp.float32(0), jnp.float32(0), jax.tree.map(jnp.zeros_like, params))
            (loss, ce, grads), _ = jax.lax.scan(micro, zeros, batch_AxBxLp1)
            n = batch_AxBxLp1.shape[0]
            loss, ce, grads = loss / n, ce / n, jax.tree.map(lambda g: g / n, grads)
        lr = hparams["lr"] * schedule(state["step"])
        opt_state = inject(cfg, state["opt_state"], lr, hparams)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        param_norm = optax.tree.norm(new_params)
        metrics = {
            "train_loss": ce, "loss_with_zloss": loss, "lr": lr, "grad_norm": optax.tree.norm(grads),
            "param_norm": param_norm, "update_ratio": optax.tree.norm(updates) / param_norm,
        }
        return {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return train_step


def make_eval_step(cfg: Config) -> Callable:
    """Per-sequence mean cross-entropy for a [B, L+1] chunk; sequence means give a proper standard error."""

    def eval_step(params, tokens_BxLp1):
        return jnp.mean(token_nll(params, tokens_BxLp1, cfg)[0], axis=-1)

    return eval_step


def init_state(cfg: Config, tx: optax.GradientTransformation, params=None) -> TrainState:
    """Fresh state; pass `params` when they were already initialized (e.g. to build `tx`)."""
    if params is None:
        params = init_params(cfg, jax.random.key(cfg.seed))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}


class Evaluator:
    """Fixed held-out set evaluated in padded chunks with one compiled program."""

    def __init__(self, cfg: Config, source: Source, place: sharding.Placement | None = None):
        self.eval = source.eval_set()
        tokens = self.eval.tokens_ExLp1
        self.n = tokens.shape[0]
        self.chunk = min(self.n, max(1, cfg.train.batch_size // cfg.train.grad_accum))
        pad = (-self.n) % self.chunk
        self.tokens_CxBxLp1 = np.concatenate([tokens, tokens[:pad]]).reshape(-1, self.chunk, tokens.shape[1])
        if place is None:
            self.chunks, self.fn = list(self.tokens_CxBxLp1), jax.jit(make_eval_step(cfg))
        else:  # chunks live on the mesh once; losses come back replicated, readable on every process
            self.chunks = [place.batch(c, axis=0) for c in self.tokens_CxBxLp1]
            self.fn = jax.jit(make_eval_step(cfg), out_shardings=place.replicated)

    def dispatch(self, params) -> list:
        return [self.fn(params, chunk) for chunk in self.chunks]

    def finish(self, pending: list) -> dict:
        seq_loss = np.concatenate([np.asarray(x) for x in pending])[: self.n].astype(np.float64)
        out = {"eval_loss": float(seq_loss.mean()),
               "eval_loss_se": float(seq_loss.std(ddof=1) / math.sqrt(self.n)) if self.n > 1 else 0.0}
        if self.eval.bytes_per_token:
            out["eval_bpb"] = out["eval_loss"] / (math.log(2) * self.eval.bytes_per_token)
        return out


def _checkpoint_manager(run: RunDir, cfg: Config):
    import orbax.checkpoint as ocp

    keep = cfg.train.checkpoint_steps  # e.g. a WSD parent's branch points: never deleted
    policy = ocp.checkpoint_managers
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=None if keep else cfg.train.keep_checkpoints, create=True,
        preservation_policy=policy.AnyPreservationPolicy([policy.LatestN(cfg.train.keep_checkpoints),
                                                          policy.CustomSteps(keep)]) if keep else None,
        cleanup_tmp_directories=True)  # drop half-written saves of a killed run
    return ocp.CheckpointManager(run.checkpoint_dir.absolute(), options=opts)


def _restore(run: RunDir, cfg: Config, state: TrainState, log: Callable[[str], None]):
    """(checkpoint manager, state, step) from the newest checkpoint that restores. A newer one that cannot be read
    (truncated, corrupted) is moved to checkpoints_unreadable/ with a warning, so the run resumes from the one
    before it and saves that step again. When none restores, nothing is moved: the error lists the steps and
    how to start over."""
    import orbax.checkpoint as ocp

    mngr = _checkpoint_manager(run, cfg)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return mngr, state, 0
    faults.point("restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    bad: list[tuple[int, str]] = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise ValueError, OSError, KeyError, ... for a broken step
            first = str(e).splitlines()[0][:300] if str(e) else ""
            bad.append((int(step), f"{type(e).__name__}: {first}"))
            _quiet_closed_loop_callbacks()
            mngr.close()
            mngr = _checkpoint_manager(run, cfg)  # a failed restore can leave the manager's handlers confused
            continue
        if bad:
            if sharding.is_primary():
                aside = run.path / "checkpoints_unreadable"
                aside.mkdir(exist_ok=True)
                for s, why in bad:
                    dest = aside / f"{s}.{time.strftime('%Y%m%d-%H%M%S')}"
                    (run.checkpoint_dir / str(s)).rename(dest)
                    log(f"WARNING: {run.checkpoint_dir / str(s)}: checkpoint cannot be restored ({why}); moved to "
                        f"{dest}; resuming from the previous checkpoint (step {step})")
            mngr.close()
            mngr = _checkpoint_manager(run, cfg)  # sees the steps as they now are, so step s+... are saved again
        return mngr, restored, int(step)
    listing = "; ".join(f"step {s}: {why}" for s, why in bad)
    raise RunDirError(f"{run.checkpoint_dir}: no checkpoint can be restored ({listing}); move the checkpoints "
                      "directory aside to start the run from step 0, or restore it from a backup")


def _quiet_closed_loop_callbacks() -> None:
    """After a failed orbax restore or save, tensorstore's pending callbacks hit a closed asyncio loop and Python
    prints one 'Event loop is closed' traceback per callback: that noise alone is dropped (other unraisables are
    not). Installed once per process."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_testbed_quiet", False):
        return

    def hook(u) -> None:
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    hook._testbed_quiet = True
    sys.unraisablehook = hook


class _Follower(RunDir):
    """A non-zero process of a multi-host run: reads the run directory; process 0 alone writes it."""

    def check_or_write_config(self, cfg: Config) -> None:
        pass

    def append_metrics(self, rows: list[dict]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> list[dict]:
        return [r for r in self.read_metrics() if r.get("step", 0) <= last_step]

    def write_summary(self, summary: dict) -> None:
        pass


def train(cfg: Config, out: str | Path, progress: bool = True, log: Callable[[str], None] = print,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Trains (or resumes) the run in `out`; returns its summary. Idempotent on a completed run.

    SIGTERM/SIGUSR1/SIGUSR2 (or `should_stop()` turning true) checkpoint at the next step and return
    {'status': 'incomplete', 'steps': s} without writing a summary: `testbed train` exits REQUEUE_EXIT.
    """
    sharding.initialize(cfg)  # multi-host: before any device is touched
    primary = sharding.is_primary()
    run = RunDir(out) if primary else _Follower(out)
    if not primary:
        progress, log = False, lambda _: None
    source = make_source(cfg.data, cfg.model.vocab_size, cfg.seed)  # may raise ConfigError: nothing written
    if source.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the data's vocabulary "
                          f"({source.vocab_size}); set model.vocab_size >= {source.vocab_size}")
    try:
        run.check_or_write_config(cfg)
    except OSError as e:
        if storage_error(e):
            raise _storage(run, e) from e
        raise
    done = run.read_summary()
    if done is not None and done.get("status") in ("completed", "diverged"):
        log(f"{run.path}: already {done['status']} at step {done['steps']}; nothing to do")
        return done
    if primary:
        run.remove_stale_temps()
    managers: list = []  # the loop's checkpoint manager, settled here if the loop raises
    try:
        try:
            with StopRequest(also=should_stop) as stop:
                return _train_loop(cfg, run, source, progress, log, stop, managers)
        finally:
            _settle(managers)
    except KeyboardInterrupt:
        raise
    except RunDirError:
        raise  # no summary: nothing about the run itself failed (unreadable checkpoints, a full disk)
    except Exception as e:
        if storage_error(e):  # no summary: the run is incomplete and resumes once there is space
            raise _storage(run, e) from e
        run.write_summary({"status": "failed", "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()})
        raise


def _settle(managers: list) -> None:
    """After the loop raised: let an in-flight asynchronous checkpoint commit (or fail cleanly) before the process
    exits, instead of being cut off at interpreter shutdown; its own error, if any, is not the one to report."""
    for mngr in managers:
        try:
            mngr.wait_until_finished()
        except Exception:
            pass
        try:
            mngr.close()
        except Exception:
            pass
    managers.clear()


def _storage(run: RunDir, e: BaseException) -> StorageError:
    """The one-line error for a full or failing disk: what happened, and that the same command resumes. orbax's
    background writers fail the same way; their leftover futures' errors are not repeated at exit."""
    import logging

    _quiet_closed_loop_callbacks()
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Future exception was never retrieved" at exit
    why = e.strerror if isinstance(e, OSError) and e.strerror else next(
        (m for m in STORAGE_MESSAGES if m in str(e)), "storage error")
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return StorageError(f"--out {run.path}: {why} while writing the run directory ({first}); free disk space there "
                        "(or pass an --out on another disk) and run the same command again: it resumes from the last "
                        "checkpoint (no summary was written: the run is not counted as finished)")


def _train_loop(cfg: Config, run: RunDir, source: Source, progress: bool, log, stop: StopRequest,
                managers: list) -> dict:
    acc = shapes.count(cfg)
    total = cfg.total_steps
    tokens_per_step = cfg.tokens_per_step
    params = init_params(cfg, jax.random.key(cfg.seed))
    tx = make_optimizer(cfg, params)
    schedule = schedules.from_config(cfg.optim, total)
    hparams = default_hparams(cfg)
    place = sharding.placement(cfg)  # None: one device, no shardings (the plain path)
    state = init_state(cfg, tx, params)
    if place is not None:  # restore reads the target shardings from the placed state: any mesh -> this mesh
        state, hparams = place.put(state, place.state_shardings(state)), place.put(hparams)
    _quiet_closed_loop_callbacks()  # a failing orbax write or read would print one traceback per pending callback
    mngr, state, start = _restore(run, cfg, state, log)
    managers.append(mngr)
    resumed = start
    if start == 0 and cfg.train.branch_from is not None:  # fresh branch: the parent's state and rows up to s
        state, start = branch.restore(cfg, run, state)
        log(f"branching {run.path} from {branch.parent_dir(cfg, run.path)} at step {start}")
    rows = run.truncate_metrics(start)
    wall0 = rows[-1]["wall_s"] if rows else 0.0
    if resumed:
        log(f"resuming {run.path} from step {start}")

    A, micro = cfg.train.grad_accum, cfg.train.batch_size // cfg.train.grad_accum
    L = cfg.data.seq_len

    def batch_at(step: int) -> np.ndarray | jax.Array:
        batch_AxBxLp1 = source.train_batch(step, cfg.train.batch_size).reshape(A, micro, L + 1)
        return batch_AxBxLp1 if place is None else place.batch(batch_AxBxLp1, axis=1)

    t0 = time.perf_counter()
    pure_step = make_train_step(cfg, tx, schedule)
    jitted = (jax.jit(pure_step, donate_argnums=0) if place is None
              else place.jit_step(pure_step, state, (A, micro, L + 1)))
    faults.point("compile")
    step_fn = jitted.lower(state, batch_at(start), hparams).compile()
    compile_s = time.perf_counter() - t0
    evaluator = Evaluator(cfg, source, place)
    entropy = evaluator.eval.entropy
    sigma_every = cfg.train.eval_every if cfg.train.sigma_every is None else cfg.train.sigma_every
    sv = spectral.SingularValues(params) if sigma_every else None
    if sv is not None and place is not None:
        sv.vecs = place.put(sv.vecs)
    voting = place is not None and jax.process_count() > 1  # processes must agree on the step they stop at

    import orbax.checkpoint as ocp

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True)

    status = "completed"
    t_start = time.perf_counter()
    t_prev, tok_prev = t_start, start * tokens_per_step
    stopping = False  # set from the signal flag (one process) or from the processes' vote (several)

    def finish(step: int, metrics, ev, sig) -> dict:
        """Turns step's device metrics (and eval) into a logged row; blocks until they are ready."""
        nonlocal t_prev, tok_prev, stopping
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        stopping = stopping or bool(m.pop("stop_vote", 0.0))
        now = time.perf_counter()
        tokens = step * tokens_per_step
        row = {"step": step, "tokens": tokens, "flops": tokens * acc.flops_per_token, **m,
               "tokens_per_s": (tokens - tok_prev) / max(now - t_prev, 1e-9),
               "wall_s": wall0 + now - t_start}
        t_prev, tok_prev = now, tokens
        epochs = source.epochs_at(tokens)
        if epochs is not None:
            row["epochs"] = epochs
        if ev is not None:
            row.update(evaluator.finish(ev))
            if entropy is not None:
                row["eval_excess"] = row["eval_loss"] - entropy
        if sig is not None:
            row["sigma_max"] = sv.finish(sig)
        return row

    def keep(row: dict) -> bool:
        return (row["step"] % cfg.train.log_every == 0 or row["step"] == total or "eval_loss" in row
                or not _finite(row))

    inflight = None  # (step, metrics, eval) dispatched but not yet read
    keep_steps = set(cfg.train.checkpoint_steps)  # saved, kept and evaluated (branch points)
    batch = batch_at(start) if start < total else None
    step = saved = start
    for i in range(start, total):
        stopping = stopping or (not voting and stop())
        if stopping:
            break
        step = i + 1
        state, metrics = step_fn(state, batch, hparams)
        faults.point("step", at=step)
        if voting:
            metrics = {**metrics, "stop_vote": place.vote(stop())}
        is_eval = step % cfg.train.eval_every == 0 or step == total or step in keep_steps
        ev = evaluator.dispatch(state["params"]) if is_eval else None
        if is_eval:
            faults.point("eval", at=step)
        is_sigma = sv is not None and (step % sigma_every == 0 or step == total)
        sig = sv.dispatch(state["params"]) if is_sigma else None
        if step < total:
            batch = batch_at(step)  # host-side data work overlaps the device step
        done = [finish(*inflight)] if inflight is not None else []  # step - 1, read while step runs
        inflight = (step, metrics, ev, sig)
        is_ckpt = step % cfg.train.checkpoint_every == 0 or step == total or step in keep_steps
        if is_ckpt:  # a checkpoint at step s is only saved once rows <= s are on disk
            done.append(finish(*inflight))
            inflight = None
        run.append_metrics([r for r in done if keep(r)])
        if done and bar is not None:
            bar.update(done[-1]["step"] - bar.n)
            bar.set_postfix(loss=f"{done[-1]['train_loss']:.4f}", tok_s=f"{done[-1]['tokens_per_s']:.0f}",
                            refresh=False)
        if any(not _finite(r) for r in done):
            status = "diverged"
            break
        if is_ckpt:
            mngr.save(step, args=ocp.args.StandardSave(state))
            faults.point("checkpoint", at=step)
            saved = step
    preempted = stopping and status == "completed" and step < total
    if preempted:  # rows in flight, then a checkpoint at this step; no summary, so the same command resumes
        if inflight is not None:
            run.append_metrics([r for r in [finish(*inflight)] if keep(r)])
        if step > saved:
            mngr.save(step, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
    mngr.close()
    managers.remove(mngr)
    if bar is not None:
        bar.close()
    faults.point("finalize")
    if preempted:
        log(f"{run.path}: stopped by {stop.describe()} at step {step}; checkpointed, the same command resumes")
        return {"status": "incomplete", "steps": step}
    summary = {**summarize(cfg, run.read_metrics(), status, start, params, acc, compile_s, entropy, source.meta),
               **(place.describe() if place is not None else {})}
    run.write_summary(summary)
    log(f"{run.path}: {status} at step {summary['steps']}, train loss {summary['final_train_loss']}, "
        f"eval loss {summary['final_eval_loss']}")
    return summary


def summarize(cfg: Config, rows: list[dict], status: str, start: int, params, acc: shapes.Accounting,
              compile_s: float, entropy: float | None, data_meta: dict) -> dict:
    """summary.json's keys from a run's metrics rows (testbed.pack writes the same ones per member)."""
    last = rows[-1] if rows else {}
    evals = [r for r in rows if "eval_loss" in r]
    last_eval = evals[-1] if evals else {}
    groups = group_table(cfg, params)
    sigmas = [r["sigma_max"] for r in rows if "sigma_max" in r]
    labels = spectral.by_name(group_labels(params))
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
        "tokens_per_s": _mean_rate(rows),
        "parametrization": parametrization.describe(cfg),
        "param_groups": groups,  # per group: effective peak LR, coupled lambda, eps, tau_iter = 1/(eta*lambda)
        **({"final_sigma_max": sigmas[-1],
            "final_sigma_normalized": spectral.normalized_sigma(cfg, sigmas[-1], labels, groups)} if sigmas else {}),
        "wall_s": last.get("wall_s"),
        "data": data_meta,
    }


def _finite(row: dict) -> bool:
    return math.isfinite(row["train_loss"]) and math.isfinite(row["grad_norm"])


def _mean_rate(rows: list[dict]) -> float | None:
    """Steady-state tokens/s: the median of logged rates, robust to the first step's warm-up."""
    rates = [r["tokens_per_s"] for r in rows[1:] if "tokens_per_s" in r]
    return float(np.median(rates)) if rates else None
