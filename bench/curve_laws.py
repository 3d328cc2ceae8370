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

import bands  # bench/bands.py
from testbed.analysis import load, schedulefit

from testbed import hardware


def markdown(df) -> str:
    """A DataFrame as a markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


# --check: the pairs README and docs/laws.md quote, and the worst |final error| each law must stay within there
CHECK = {"annealing": (["constant|cosine to 0.1"], 0.01),  # measured 0.68% (configs/schedules.yaml, both seeds)
         "multipower": (["cosine to 0.1|wsd 1-sqrt 20%", "cosine to 0.1|wsd linear 20%",
                         "cosine to 0.1|wsd linear 50%"], 0.01)}  # measured 0.76%


def check(table) -> int:
    """Each CHECK law's worst error on its pairs, and that law's worst against the no-law baseline's there."""
    items = []
    for law, (pairs, worst) in CHECK.items():
        fitted = {p.replace("|", " + ") for p in pairs}
        rows = table[table["fitted"].isin(fitted)]
        err = rows.loc[rows["law"] == law, "final_rel_error"].abs()
        base = rows.loc[rows["law"] == schedulefit.BASELINE, "final_rel_error"].abs()
        if err.empty:
            bands.not_measurable(f"no {law} predictions from {sorted(fitted)} (runs from configs/schedules.yaml?)")
        items.append(bands.band(f"{law} fitted on {' / '.join(sorted(fitted))}: worst |final error|", err.max(),
                                0.0, worst))
        items.append(bands.band(f"{law}: worst error / the no-law baseline's", err.max() / base.max(), 0.0, 1.0))
    return bands.verdict(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", help="a sweep directory whose runs differ in optim.* schedule settings (and --by)")
    ap.add_argument("--by", default="seed", help="the column that groups runs into one model each (default seed)")
    ap.add_argument("--laws", default="annealing,multipower")
    ap.add_argument("--pairs", action="append", help="LABEL_A|LABEL_B to fit on (repeatable; default every pair)")
    ap.add_argument("--out", help="write table.csv and summary.csv here")
    ap.add_argument("--check", action="store_true", help="fit only the quoted pairs (CHECK) and exit 1 unless each "
                    "law's worst error there is within 1% and below the no-law baseline's")
    a = ap.parse_args(argv)
    if not Path(a.runs).is_dir():
        if a.check:
            bands.not_measurable(f"{a.runs} is not here: run testbed sweep configs/schedules.yaml --out {a.runs}")
        ap.error(f"{a.runs}: no such sweep directory")
    if a.check and not a.pairs:
        a.pairs = [p for pairs, _ in CHECK.values() for p in pairs]
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
    return check(table) if a.check else 0


if __name__ == "__main__":
    sys.exit(main())
