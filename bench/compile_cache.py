"""The persistent compilation cache a sweep's workers share: the train step's compile_s of two identical
`testbed train` runs in one cache directory (the first compiles and writes, the second reads), as sweep workers
get it (launch/runner.py trainer_env). Prints JSON.

    python bench/compile_cache.py [--config configs/tiny.yaml] [--set model.d_model=128 ...] [--repeats 2] [--check]
--check: every pair's cached / cold compile_s <= 0.5 (docs/benchmarks.md: 0.11-0.18 earlier, 0.22-0.36 on 2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bands  # bench/bands.py
from testbed.launch import runner

from testbed import hardware

ROOT = Path(__file__).resolve().parents[1]


def train_compile_s(cfg: str, sets: list[str], out: Path, env: dict) -> float:
    """One fresh `testbed train` (its own run directory); the compile_s its summary.json reports."""
    cmd = [sys.executable, "-m", "testbed.launch.cli", "train", cfg, "--out", str(out), "--no-progress",
           *(x for kv in sets for x in ("--set", kv))]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return json.loads((out / "summary.json").read_text())["compile_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--set", dest="sets", action="append",
                    default=["train.steps=5", "train.eval_every=5", "optim.warmup_steps=0"])
    ap.add_argument("--repeats", type=int, default=2, help="cold/warm pairs, each in a fresh cache directory")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the cache cuts compile_s to <= 0.5x")
    args = ap.parse_args()
    pairs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            sweep_dir = Path(tmp)
            base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
            env = runner.trainer_env(sweep_dir, {**base, "PYTHONUNBUFFERED": "1"})
            cold = train_compile_s(args.config, args.sets, sweep_dir / "a", env)
            warm = train_compile_s(args.config, args.sets, sweep_dir / "b", env)
            files = sum(1 for _ in (sweep_dir / runner.CACHE_DIR).iterdir())
            pairs.append({"cold_compile_s": round(cold, 3), "warm_compile_s": round(warm, 3),
                          "ratio": round(warm / cold, 3), "cache_files": files})
    print(json.dumps({"config": args.config, "sets": args.sets, "machine": hardware.machine(),
                      "jax_platforms": os.environ.get("JAX_PLATFORMS", "(default)"), "pairs": pairs,
                      "loadavg": os.getloadavg()}, indent=2))
    if args.check:
        sys.exit(bands.verdict([bands.band("cached / cold compile_s", max(p["ratio"] for p in pairs), 0.0, 0.5)]))


if __name__ == "__main__":
    main()
