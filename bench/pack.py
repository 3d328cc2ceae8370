"""Packing benchmark: aggregate tokens/s of K same-shape runs per layout vs one at a time; one JSON line per case.

    python bench/pack.py [--config configs/tiny.yaml] [--widths 64,128] [--packs 2,4,8] [--duration 2] [--rounds 3]

Layouts (launch/layout.py): (a) one at a time in one process with all cores, (b) one vmapped pack of K,
(c) the runs split over one pinned single-threaded process per core, one at a time, (d) a pack of K / cores per
core, and packs of the powers of two between; each also with XLA:CPU's YNNPACK fusion off. Every candidate
compiles first, then candidates take turns timing `--duration`-second windows for `--rounds` rounds; each reports
its best window (robust to other jobs on a shared machine; the load average is printed too). Steady state:
compile time is reported, not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import bands  # bench/bands.py
from testbed.launch.layout import candidates, cores_available, measure, report

from testbed import config, hardware


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--widths", default="64,128")
    ap.add_argument("--packs", default="2,4,8")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--check", action="store_true", help="exit 1 unless the best layout for K = 2 d_model-64 runs "
                    "is >= 1.2x one at a time (docs/benchmarks.md: 1.56x on 2 cores)")
    args = ap.parse_args()
    checks = []
    cores = cores_available()
    packs = [int(k) for k in args.packs.split(",")]
    for width in (int(w) for w in args.widths.split(",")):
        cfg = config.load(args.config, [*args.overrides, f"model.d_model={width}"])
        layouts = list(dict.fromkeys(lay for k in packs for lay in candidates(k, len(cores))))
        load = os.getloadavg()
        results = measure(cfg, layouts, args.duration, args.rounds, cores, log=lambda s: print(s, file=sys.stderr))
        for k in packs:
            mine = {lay: r for lay, r in results.items() if lay in candidates(k, len(cores))}
            row = report(cfg, k, mine, len(cores))
            print(json.dumps({**row, "loadavg_before": load, "loadavg_after": os.getloadavg(),
                              "machine": hardware.machine()}), flush=True)
            if (width, k) == (64, 2):
                checks.append(bands.band("best layout / one at a time, K = 2, d_model 64",
                                         row["best_speedup_vs_sequential"], 1.2))
    if args.check:
        if not checks:
            bands.not_measurable("--check needs --widths with 64 and --packs with 2")
        sys.exit(bands.verdict(checks))


if __name__ == "__main__":
    main()
