"""Does the embedded synthetic data have scaling laws? Loss above the known entropy floor vs N and vs D.

    python bench/data_scaling.py [--out runs/data_scaling] [--widths 32,64,128,256] [--tokens 2000000]

Trains (a) a width ladder at a fixed token budget and (b) one width at several token budgets, all on the
default synthetic source, and prints JSON: per-run eval loss, excess over the exact entropy floor, and the
log-log slope (and R^2) of excess vs non-embedding N and vs D. A power law shows as a straight line with
R^2 near 1 and no flattening at the large end. Runs are ordinary run directories, so re-running resumes.
LR: 1e-2 * 64 / d_model (a simple SP width correction; muP arrives in a later issue).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from testbed import config, hardware
from testbed.shapes import ladder
from testbed.train import train


def run_one(out: Path, width: int, tokens: int, seq_len: int, batch: int) -> dict:
    shape = ladder(width, depth=2, head_dim=32)
    cfg = config.load(None, [*(f"model.{k}={v}" for k, v in shape.items()), f"data.seq_len={seq_len}",
                        f"train.batch_size={batch}", f"train.tokens={tokens}", f"optim.lr={1e-2 * 64 / width}",
                        "optim.warmup_steps=20", "optim.schedule=cosine", "train.eval_every=100000",
                        "train.checkpoint_every=100000", "data.eval_sequences=256"])
    s = train(cfg, out / f"w{width}_t{tokens}", progress=False, log=lambda _: None)
    return {"d_model": width, "tokens": s["tokens"], "params_nonembedding": s["params_nonembedding"],
            "eval_loss": s["final_eval_loss"], "entropy": s["data_entropy"],
            "excess": s["final_eval_loss"] - s["data_entropy"], "tokens_per_s": s["tokens_per_s"]}


def loglog(x, y) -> dict:
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, icept = np.polyfit(lx, ly, 1)
    r2 = 1 - np.sum((ly - (slope * lx + icept)) ** 2) / np.sum((ly - ly.mean()) ** 2)
    return {"slope": float(slope), "r2": float(r2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/data_scaling")
    ap.add_argument("--widths", default="32,64,128,256")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="fixed D for the width ladder")
    ap.add_argument("--d-width", type=int, default=64, help="fixed width for the token sweep")
    ap.add_argument("--d-tokens", default="250000,500000,1000000,2000000")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    out = Path(args.out)
    vs_n = [run_one(out, int(w), args.tokens, args.seq_len, args.batch) for w in args.widths.split(",")]
    vs_d = [run_one(out, args.d_width, int(t), args.seq_len, args.batch) for t in args.d_tokens.split(",")]
    print(json.dumps({
        "machine": hardware.machine(), "vs_n": vs_n, "vs_d": vs_d,
        "fit_excess_vs_n": loglog([r["params_nonembedding"] for r in vs_n], [r["excess"] for r in vs_n]),
        "fit_excess_vs_d": loglog([r["tokens"] for r in vs_d], [r["excess"] for r in vs_d]),
    }))


if __name__ == "__main__":
    main()
