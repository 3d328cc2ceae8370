"""The data loader alone: tokens/s of `Source.train_batch` (what the train loop calls each step), one JSON line per
source, next to the train step's own tokens/s, to show the loader is never the bottleneck.

    python bench/data_pipeline.py [--batch-size 16] [--seq-len 64,256] [--seconds 3]

Sources: the embedded synthetic mixture (the default: 16384 skills over 256 tokens) and, when a byte-level text
file is given with --text, the text source. The train loop builds step s+1's batch on the host while the device runs
step s (testbed/loop.py), so the loader only has to beat the step.
"""

from __future__ import annotations

import argparse
import json
import time

from testbed import config, hardware
from testbed.data import make_source


def loader_tokens_per_s(cfg: config.Config, seconds: float) -> dict:
    source = make_source(cfg.data, cfg.model.vocab_size, cfg.seed)
    B, L = cfg.train.batch_size, cfg.data.seq_len
    source.train_batch(0, B)  # tables built, caches warm
    t0, step = time.perf_counter(), 1
    while time.perf_counter() - t0 < seconds:
        batch = source.train_batch(step, B)
        step += 1
    wall = time.perf_counter() - t0
    assert batch.shape == (B, L + 1), batch.shape
    return {"source": cfg.data.source, "batch_size": B, "seq_len": L, "batches": step - 1,
            "tokens_per_s": round((step - 1) * B * L / wall), "ms_per_batch": round(1e3 * wall / (step - 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", default="64,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--text", help="a text file for the byte-level text source (optional)")
    args = ap.parse_args()
    for L in (int(x) for x in args.seq_len.split(",")):
        sets = [f"data.seq_len={L}", f"train.batch_size={args.batch_size}", "train.steps=1000"]
        cfg = config.load(None, sets)
        print(json.dumps({**loader_tokens_per_s(cfg, args.seconds), "machine": hardware.machine()}))
        if args.text:
            cfg = config.load(None, [*sets, "data.source=text", f"data.path={args.text}", "data.tokenizer=byte"])
            print(json.dumps({**loader_tokens_per_s(cfg, args.seconds), "machine": hardware.machine()}))


if __name__ == "__main__":
    main()
