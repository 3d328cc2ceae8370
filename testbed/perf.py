"""Throughput measurement: the train step's tokens/s, and MFU against a matmul peak measured in the same process
and against the chip's datasheet peak (testbed.hardware; accelerators only), the figure other trainers report."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from testbed import hardware, shapes
from testbed.config import Config
from testbed.model import attention_impl, compute_dtype, init_params, param_info
from testbed.optim import make_optimizer
from testbed.train import init_state, make_train_step


def _best_time(fn, reps: int) -> float:
    fn()  # warm-up (and compile)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_flops(dtype=jnp.float32, sizes: tuple[int, ...] | None = None, reps: int = 10) -> float:
    """Best FLOP/s over square matmuls on the default device: the roofline MFU is measured against.

    The best over several sizes and repetitions, so a momentarily busy machine lowers MFU rather than
    inflating it.
    """
    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        ka, kb = jax.random.split(jax.random.key(0))
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        f = jax.jit(lambda a, b: a @ b)
        best = max(best, 2 * n**3 / _best_time(lambda: f(a, b), reps))  # noqa: B023 (called at once)
    return best


def bench_train_step(cfg: Config, steps: int = 10) -> dict:
    """Times the compiled train step on random tokens (excluding compile) and reports MFU."""
    acc = shapes.count(cfg)
    params = init_params(cfg, jax.random.key(cfg.seed))
    tx = make_optimizer(cfg, param_info(params))
    step_fn = make_train_step(cfg, tx)
    state = init_state(cfg, tx, params)
    A, B, L = cfg.train.grad_accum, cfg.train.batch_size // cfg.train.grad_accum, cfg.data.seq_len
    rng = np.random.default_rng(cfg.seed)
    batch = jnp.asarray(rng.integers(0, cfg.model.vocab_size, (A, B, L + 1), dtype=np.int32))
    t0 = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)  # first call: allocation / warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = cfg.tokens_per_step
    peak = matmul_peak_flops(compute_dtype(cfg))
    kind = jax.devices()[0].device_kind
    datasheet = hardware.datasheet_peak(kind, cfg.train.compute_dtype)  # None on CPUs: the measured peak stands
    achieved = tokens * acc.flops_per_token / step_s
    return {
        "tokens_per_s": tokens / step_s, "step_s": step_s, "step_s_min": float(np.min(times)),
        "compile_s": compile_s, "flops_per_token": acc.flops_per_token,
        "flops_per_token_6n": acc.flops_per_token_6n, "achieved_flops": achieved, "peak_flops": peak,
        "mfu": achieved / peak, "peak_flops_datasheet": datasheet,
        "mfu_datasheet": achieved / datasheet if datasheet else None, "params_total": acc.params_total,
        "device": str(jax.devices()[0]), "device_kind": kind, "backend": jax.default_backend(),
        "attention": attention_impl(cfg), "dtype": cfg.train.compute_dtype, "steps_timed": steps,
        "machine": hardware.machine(),
    }


def format_bench(result: dict) -> str:
    """`testbed bench` as text: one `key value` line per measurement."""
    return "\n".join(f"{k:20s} {v}" for k, v in result.items())
