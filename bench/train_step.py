"""Train-step throughput at the reference shape for d_model 64, 128, 256: prints one JSON line per width.

    python bench/train_step.py [--steps 10] [--set key=value ...]

Shape: n_layers 4, heads of 64 (d_model / 64, at least 1), vocab 256, seq_len 256, batch 16, float32
(the shape the reference numbers were measured at, for d_model 256).
"""

from __future__ import annotations

import argparse
import json
import sys

import bands  # bench/bands.py

from testbed import config
from testbed.perf import bench_train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--check", action="store_true", help="exit 1 unless each width's MFU (against the matmul peak "
                    "measured in this run) is in [0.08, 1] (docs/benchmarks.md, 2 CPU cores: 0.13-0.46)")
    args = ap.parse_args()
    checks = []
    for width in (int(w) for w in args.widths.split(",")):
        cfg = config.load(None, ["train.steps=100", f"model.d_model={width}", "model.n_layers=4",
                            f"model.n_heads={max(1, width // 64)}", "model.vocab_size=256", "data.seq_len=256",
                            "train.batch_size=16", *args.overrides])
        row = {"d_model": width, **bench_train_step(cfg, steps=args.steps)}
        print(json.dumps(row), flush=True)
        checks.append(bands.band(f"MFU at d_model {width}", row["mfu"], 0.08, 1.0))
    if args.check:
        sys.exit(bands.verdict(checks))


if __name__ == "__main__":
    main()
