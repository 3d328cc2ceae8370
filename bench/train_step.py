"""Train-step throughput at the reference shape for d_model 64, 128, 256: prints one JSON line per width.

    python bench/train_step.py [--steps 10] [--set key=value ...]

Shape: n_layers 4, heads of 64 (d_model / 64, at least 1), vocab 256, seq_len 256, batch 16, float32
(the shape the issue's reference numbers were measured at, for d_model 256).
"""

from __future__ import annotations

import argparse
import json

from testbed import config
from testbed.perf import bench_train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    for width in (int(w) for w in args.widths.split(",")):
        cfg = config.load(None, ["train.steps=100", f"model.d_model={width}", "model.n_layers=4",
                            f"model.n_heads={max(1, width // 64)}", "model.vocab_size=256", "data.seq_len=256",
                            "train.batch_size=16", *args.overrides])
        print(json.dumps({"d_model": width, **bench_train_step(cfg, steps=args.steps)}), flush=True)


if __name__ == "__main__":
    main()
