"""Where the train step's time goes, by op category: prints JSON {category: ms per step} and the top ops.

    python bench/profile_step.py [--set key=value ...] [--steps 3]

Runs the compiled train step under jax.profiler, sums each XLA op's device time from the trace, and maps
every op to a category through the `op_name` metadata of the compiled HLO (which module it came from) and
its kind (matmul vs elementwise/transposing fusion). Default shape: the reference
(d_model 256, 4 layers, 4 heads, vocab 256, seq_len 256, batch 16, float32).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from testbed import config, hardware
from testbed.model import init_params, param_info
from testbed.optim import make_optimizer
from testbed.train import init_state, make_train_step

REFERENCE = ["train.steps=100", "model.d_model=256", "model.n_layers=4", "model.n_heads=4", "model.vocab_size=256",
             "data.seq_len=256", "train.batch_size=16"]


def category(op_name: str, kind: str) -> str:
    """Module from the op's metadata path, plus matmul / other from the fusion kind."""
    where = "other"
    for key, label in (("/attn/qkv", "qkv+out proj"), ("/attn/out", "qkv+out proj"), ("/attn", "attention core"),
                       ("/mlp", "mlp"), ("_norm", "norms"), ("readout", "readout+loss"),
                       ("embed", "embedding"), ("optax", "optimizer"), ("adam", "optimizer")):
        if key in op_name:
            where = label
            break
    if where == "other" and ("log_softmax" in op_name or "logsumexp" in op_name or "take_along" in op_name):
        where = "readout+loss"
    if where == "other" and "Transformer" not in op_name and "transpose(jvp" not in op_name:
        where = "optimizer"
    is_mm = kind.startswith(("ynn", "dot", "xnn", "onednn", "cublas", "custom-call"))
    return f"{where} / {'matmul' if is_mm else 'elementwise+copies'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = config.load(None, [*REFERENCE, *args.overrides])
    tx = make_optimizer(cfg, param_info(init_params(cfg, jax.random.key(0))))
    step = jax.jit(make_train_step(cfg, tx))
    state = init_state(cfg, tx)
    A, B, L = cfg.train.grad_accum, cfg.train.batch_size // cfg.train.grad_accum, cfg.data.seq_len
    batch = jnp.asarray(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (A, B, L + 1), dtype=np.int32))
    hlo = step.lower(state, batch).compile().as_text()
    meta = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"%([\w.\-]+) = \S+ (\S+?)\(.*?op_name=\"([^\"]*)\"", hlo)}
    for _ in range(2):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(args.steps):
                state, m = step(state, batch)
                jax.block_until_ready(m)
        trace = next(Path(tmp).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    per_op = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in meta:
            per_op[e["name"]] += e["dur"] / 1e3 / args.steps
    per_cat = collections.Counter()
    for name, ms in per_op.items():
        kind, op_name = meta[name]
        per_cat[category(op_name, name if name.startswith(("ynn", "xnn", "dot")) else kind)] += ms
    total = sum(per_cat.values())
    print(json.dumps({"machine": hardware.machine(), "total_op_ms": round(total, 1),
                      "by_category_ms": {k: round(v, 1) for k, v in per_cat.most_common()},
                      "by_category_pct": {k: round(100 * v / total, 1) for k, v in per_cat.most_common()},
                      "top_ops": [(k, round(v, 2), meta[k][1][-60:]) for k, v in per_op.most_common(10)]}))


if __name__ == "__main__":
    main()
