"""A whole sweep's aggregate throughput: K same-shape runs one at a time vs the layout the local backend picks.

    python bench/sweep_layout.py [--runs 8] [--d-model 64] [--steps 300] [--out /tmp/sweep_layout]

Trains the same K runs (configs/tiny.yaml, K seeds) twice into fresh sweep directories: `--workers 1 --pack 1`,
then with the measured layout (`--layout measure`; the measurement's own time is reported apart). Wall time covers
everything a user waits for: process start, compiles, evals, checkpoints. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bands  # bench/bands.py
import yaml

from testbed import hardware

ROOT = Path(__file__).resolve().parent.parent


def sweep(spec: Path, out: Path, *flags: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "testbed.launch.cli", "sweep", str(spec), "--out", str(out), *flags],
                       capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, r.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="/tmp/sweep_layout")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the picked layout's sweep is >= 1.2x "
                    "faster than one run at a time (README: 1.73x, then 1.33x for 8 d_model-64 runs on 2 cores)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = out / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "set": {"model.d_model": args.d_model, "train.steps": args.steps, "train.eval_every": args.steps,
                "train.checkpoint_every": args.steps},
        "grid": {"seed": list(range(args.runs))}}))
    from testbed import config

    cfg = config.load(str(ROOT / "configs" / "tiny.yaml"),
                      [f"model.d_model={args.d_model}", f"train.steps={args.steps}"])
    tokens = args.runs * args.steps * cfg.tokens_per_step
    t_measure = time.perf_counter()
    from testbed.launch import layout

    best = layout.choose_layout(cfg, min(args.runs, 8), refresh=True)
    t_measure = time.perf_counter() - t_measure
    seq_s, _ = sweep(spec, out / "sequential", "--workers", "1", "--pack", "1")
    lay_s, log = sweep(spec, out / "layout")  # auto: the layout just measured, from the cache
    line = next((s for s in log.splitlines() if "layout" in s), "")
    print(json.dumps({"machine": hardware.machine(), "runs": args.runs, "d_model": args.d_model, "steps": args.steps,
                      "tokens": tokens,
                      "layout": best.name, "measure_s": round(t_measure, 1),
                      "sequential_wall_s": round(seq_s, 1), "layout_wall_s": round(lay_s, 1),
                      "sequential_tokens_per_s": round(tokens / seq_s), "layout_tokens_per_s": round(tokens / lay_s),
                      "speedup_vs_sequential": round(seq_s / lay_s, 3), "sweep_log": line}))
    if args.check:
        sys.exit(bands.verdict([bands.band("sweep wall one at a time / picked layout", seq_s / lay_s, 1.2)]))


if __name__ == "__main__":
    main()
