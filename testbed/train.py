"""The pure train step, eval, and `train`: one run through testbed.loop on one device or a device mesh.

`make_train_step` returns a pure function (state, batch) -> (state, metrics) of the params, the optimizer state
(which carries the injected peak LR and weight decay: testbed.optim) and the batch: no Python state, no host
I/O, so it can be jitted with donated buffers, vmapped over runs and hyperparameters (testbed.pack) and sharded
over a mesh (testbed.sharding). The loop that drives it and writes the run directory is testbed.loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from testbed import faults, hardware, optim, sharding, spectral
from testbed.config import Config
from testbed.data import Source
from testbed.data.base import LazyBatch
from testbed.loop import Member, make_member, train_members
from testbed.model import Transformer, init_params, param_info
from testbed.runstore import RunDir

TrainState = dict  # {"params": tree, "opt_state": optax state (with the hyperparameters), "step": int32 scalar}


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


def make_train_step(cfg: Config, tx: optax.GradientTransformation) -> Callable:
    """The pure step. batch: int32 [grad_accum, micro_batch, seq_len + 1]; tx from testbed.optim.make_optimizer."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch_AxBxLp1):
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
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        param_norm = optax.tree.norm(new_params)
        metrics = {
            "train_loss": ce, "loss_with_zloss": loss, "lr": optim.applied_lr(opt_state),
            "grad_norm": optax.tree.norm(grads),
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
    """Fresh state carrying cfg's peak LR and weight decay; pass `params` when they were already initialized."""
    if params is None:
        params = init_params(cfg, jax.random.key(cfg.seed))
    return {"params": params, "opt_state": optim.init(tx, params, cfg), "step": jnp.int32(0)}


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
        mean, se = self.eval.mean_and_se(seq_loss)
        out = {"eval_loss": mean, "eval_loss_se": se}
        if self.eval.bytes_per_token:
            out["eval_bpb"] = out["eval_loss"] / (math.log(2) * self.eval.bytes_per_token)
        return out


class _Follower(RunDir):
    """A non-zero process of a multi-host run: reads the run directory; process 0 alone writes it."""

    def check_or_write_config(self, cfg: Config, devices: dict | None = None) -> None:
        pass

    def append_metrics(self, rows: list[dict]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> list[dict]:
        return [r for r in self.read_metrics() if r.get("step", 0) <= last_step]

    def write_summary(self, summary: dict) -> None:
        pass


class SingleProgram:
    """testbed.loop's device side for one run: the jitted step on one device, or sharded over a device mesh
    (testbed.sharding) spanning one or several processes, which then vote on the step to stop at."""

    def __init__(self, member: Member, tx: optax.GradientTransformation, place: sharding.Placement | None,
                 start: int):
        cfg, self.place, self.source = member.cfg, place, member.source
        self.cfg, self.state = cfg, member.state
        self.shape = (cfg.train.grad_accum, cfg.train.batch_size // cfg.train.grad_accum, cfg.data.seq_len + 1)
        self.voting = place is not None and jax.process_count() > 1  # processes must agree on the step to stop at
        params = self.state["params"]
        self.info = param_info(params)
        self.param_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        t0 = time.perf_counter()
        pure_step = make_train_step(cfg, tx)
        jitted = (jax.jit(pure_step, donate_argnums=0) if place is None
                  else place.jit_step(pure_step, self.state, self.shape))
        faults.point("compile")
        self.step_fn = jitted.lower(self.state, self.batch_at(start)).compile()
        self.compile_s = time.perf_counter() - t0
        self.evaluator = Evaluator(cfg, member.source, place)
        self.eval_params = optim.eval_params_fn(cfg)
        sigma_every = cfg.train.eval_every if cfg.train.sigma_every is None else cfg.train.sigma_every
        self.sv = spectral.SingularValues(params) if sigma_every else None
        if self.sv is not None and place is not None:
            self.sv.vecs = place.put(self.sv.vecs)

    def batch_at(self, step: int):
        if self.place is not None:  # on a mesh each process reads only its devices' rows
            return self.place.batch(LazyBatch(self.source, step, self.cfg.train.batch_size, self.shape), axis=1)
        return self.source.train_batch(step, self.cfg.train.batch_size).reshape(self.shape)

    def step(self, batch, stop: bool):
        self.state, metrics = self.step_fn(self.state, batch)
        return {**metrics, "stop_vote": self.place.vote(stop)} if self.voting else metrics

    def dispatch_eval(self):
        return self.evaluator.dispatch(self.eval_params(self.state["opt_state"], self.state["params"]))

    def dispatch_sigma(self):
        return self.sv.dispatch(self.state["params"]) if self.sv is not None else None

    def host_rows(self, metrics, ev, sig) -> list[dict]:
        return [{"metrics": {k: float(v) for k, v in jax.device_get(metrics).items()},
                 "eval": self.evaluator.finish(ev) if ev is not None else None,
                 "sigma_max": self.sv.finish(sig) if sig is not None else None}]

    def member_state(self, k: int):
        return self.state

    def describe(self) -> dict:
        return self.place.describe() if self.place is not None else {}


def train(cfg: Config, out: str | Path, progress: bool = True, log: Callable[[str], None] = print,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Trains (or resumes) the run in `out`; returns its summary. Idempotent on a completed run.

    SIGTERM/SIGUSR1/SIGUSR2 (or `should_stop()` turning true) checkpoint at the next step and return
    {'status': 'incomplete', 'steps': s} without writing a summary: `testbed train` exits REQUEUE_EXIT.
    """
    sharding.initialize(cfg)  # multi-host: before any device is touched
    seen = hardware.select(cfg)  # train.platform: the requested platform or a ConfigError, nothing written
    primary = sharding.is_primary()
    if not primary:
        progress, log = False, lambda _: None
    member = make_member(cfg, out, run=None if primary else _Follower(out))  # may raise ConfigError: nothing written
    place = sharding.placement(cfg)  # None: one device, no shardings (the plain path)
    params = init_params(cfg, jax.random.key(cfg.seed))
    tx = optim.make_optimizer(cfg, param_info(params))

    def fresh_state(m: Member) -> TrainState:
        state = init_state(cfg, tx, params)  # restore reads the target shardings from the placed state
        return state if place is None else place.put(state, place.state_shardings(state))

    [summary] = train_members([member], fresh_state, lambda group, start: SingleProgram(group[0], tx, place, start),
                              packed=False, progress=progress, log=log, should_stop=should_stop, primary=primary,
                              devices=seen)
    return summary

