"""Curve laws across schedules: fit the annealing and multi-power laws on every pair of LR schedules of one model
and predict the final eval loss of the others (analysis/schedulefit.py). Prints JSON lines (one per prediction),
then markdown tables (the ones in docs/laws.md).

    testbed sweep configs/schedules.yaml --out runs/schedules --workers 2
    python bench/curve_laws.py runs/schedules [--by seed] [--pairs "schedule=constant|schedule=cosine"] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from testbed.analysis import load, schedulefit

from testbed import hardware


def markdown(df) -> str:
    """A DataFrame as a markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="a sweep directory whose runs differ in optim.* schedule settings (and --by)")
    ap.add_argument("--by", default="seed", help="the column that groups runs into one model each (default seed)")
    ap.add_argument("--laws", default="annealing,multipower")
    ap.add_argument("--pairs", action="append", help="LABEL_A|LABEL_B to fit on (repeatable; default every pair)")
    ap.add_argument("--out", help="write table.csv and summary.csv here")
    a = ap.parse_args(argv)
    cur = load.curves(a.runs)
    cur = cur[cur["ok"].astype(bool)]
    t0 = time.perf_counter()
    pairs = [tuple(p.split("|")) for p in a.pairs] if a.pairs else None
    table = schedulefit.cross_schedule(cur, laws=a.laws.split(","), by=a.by or None, pairs=pairs)
    for r in table.to_dict("records"):
        print(json.dumps(r, default=str))
    summ = schedulefit.summary(table)
    print(json.dumps({"machine": hardware.machine(), "predictions": len(table),
                      "wall_s": round(time.perf_counter() - t0, 1)}))
    print(markdown(summ))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(a.out) / "table.csv", index=False)
        summ.to_csv(Path(a.out) / "summary.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
