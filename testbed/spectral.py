"""Top singular value of every matrix parameter: Fan et al.'s weight-decay diagnostic.

Power iteration in one small jitted program: 64 matrix-vector pairs per matrix, by FLOP count (estimated, not
timed) about 1% of a d_model-256 train step when logged every eval. Dispatched asynchronously like eval; no
host-side SVD on the training path.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from testbed.config import Config
from testbed.model import param_info


def by_name(tree) -> dict:
    """{'a/b/kernel': leaf}: the names sigma_max is logged under (metrics rows, summary)."""
    return {"/".join(str(k.key) for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def matrix_paths(params) -> list[str]:
    """Names of every 2-D matrix (hidden, readout and embedding tables); norm gains and biases are vectors."""
    info = by_name(param_info(params))
    return [n for n, leaf in by_name(params).items() if leaf.ndim == 2 and info[n].role != "vector"]


def power_iteration(iters: int):
    """A jitted (matrices, start vectors) -> sigma_max per matrix."""

    def one(w, v):
        w = w.astype(jnp.float32)

        def body(_, v):
            v_new = w.T @ (w @ v)
            n = jnp.linalg.norm(v_new)
            return jnp.where(n > 0, v_new / jnp.where(n > 0, n, 1.0), v)  # a zero matrix keeps its start vector

        return jnp.linalg.norm(w @ jax.lax.fori_loop(0, iters, body, v))

    return jax.jit(lambda mats, vecs: {k: one(mats[k], vecs[k]) for k in mats})


class SingularValues:
    """sigma_max of every matrix parameter, from fixed start vectors: a pure function of the params, so a
    resumed run logs the same values as an uninterrupted one (a warm start would carry history)."""

    def __init__(self, params, iters: int = 64):
        self.names = matrix_paths(params)
        flat = by_name(params)
        keys = jax.random.split(jax.random.key(0), len(self.names))
        self.vecs = {n: jax.random.normal(k, (flat[n].shape[1],)) for n, k in zip(self.names, keys, strict=True)}
        self.fn = power_iteration(iters)

    def dispatch(self, params) -> dict:
        """Starts the computation (device arrays, no host sync), so it overlaps the next train step."""
        flat = by_name(params)
        return self.fn({n: flat[n] for n in self.names}, self.vecs)

    @staticmethod
    def finish(sig: dict) -> dict[str, float]:
        return {n: float(v) for n, v in jax.device_get(sig).items()}

    def __call__(self, params) -> dict[str, float]:
        return self.finish(self.dispatch(params))


def normalized_sigma(cfg: Config, sigma: dict[str, float], labels: dict[str, str], table: dict) -> dict:
    """Fan et al.'s width-free number: sigma_max / (sqrt(eta_g / lambda_g) * d^0.75), d = d_model; None if undecayed."""
    out = {}
    for name, s in sigma.items():
        row = table[labels[name]]
        lr, lam = row["lr"], row["weight_decay"]
        out[name] = s / (math.sqrt(lr / lam) * cfg.model.d_model ** 0.75) if lam > 0 else None
    return out
