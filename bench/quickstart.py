"""`testbed quickstart` wall time by phase (train, fit, held-out run, report) from a fresh directory, then the
re-run (resume) time; one JSON line.

    python bench/quickstart.py [--size small] [--out /tmp/bench_quickstart]

The whole command a user runs, in a subprocess: process start, compiles, evals and the report included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from testbed import hardware


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--out", default="/tmp/bench_quickstart")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [sys.executable, "-m", "testbed.launch.cli", "quickstart", "--size", args.size, "--out", args.out, "--json"]
    t0 = time.perf_counter()
    first = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if first.returncode:
        sys.exit(f"quickstart failed ({first.returncode}):\n{first.stderr[-3000:]}")
    s = json.loads(first.stdout)
    t0 = time.perf_counter()
    again = subprocess.run(cmd, capture_output=True, text=True)
    rerun = time.perf_counter() - t0
    h = s["holdout"]
    print(json.dumps({
        "size": args.size, "runs": s["runs"], "wall_s": round(wall, 1), "phases": s["phases"],
        "rerun_s": round(rerun, 1), "rerun_ok": again.returncode == 0,
        "alpha": s["chinchilla"]["params"]["alpha"], "beta": s["chinchilla"]["params"]["beta"],
        "a_parametric": s["chinchilla_a"], "a_isoflop": s["isoflop"]["params"]["a"],
        "E": s["chinchilla"]["params"]["E"], "data_entropy": s["data_entropy"],
        "holdout": {k: h.get(k) for k in ("width", "C", "predicted_loss", "predicted_ci", "observed_loss",
                                          "rel_error", "inside_ci")},
        "machine": hardware.machine(),
    }))


if __name__ == "__main__":
    main()
