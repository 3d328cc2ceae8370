"""Approach 3 on Epoch's 240 Chinchilla points: the full 4,500-start grid plus 1,000 bootstrap refits; one JSON line.

    python bench/fit_chinchilla.py [--bootstrap 1000] [--csv ../shared/data/epoch_chinchilla/svg_extracted_data.csv]

Wall time includes jax compilation (a fresh process each time). Refits start at the point estimate, as Epoch's do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from testbed.analysis import fit, laws

from testbed import hardware

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "epoch_chinchilla" / "svg_extracted_data.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default=str(CSV))
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    df = pd.read_csv(args.csv).sort_values("loss").iloc[:-5]  # Epoch drop the 5 highest losses
    N = df["Model Size"].to_numpy(float)
    X, y = np.stack([N, df["Training FLOP"].to_numpy(float) / (6 * N)], 1), df["loss"].to_numpy(float)
    t0 = time.perf_counter()
    r = fit.fit(laws.CHINCHILLA, X, y, bootstrap=args.bootstrap)
    wall = time.perf_counter() - t0
    print(json.dumps({"machine": hardware.machine(), "points": len(y), "starts": r.diagnostics["starts"],
                      "bootstrap": args.bootstrap,
                      "wall_s": round(wall, 2), "grid_fit_s": r.diagnostics["grid_fit_s"],
                      "bootstrap_s": r.diagnostics.get("bootstrap", {}).get("fit_s"), "params": r.params,
                      "ci": {k: r.ci[k] for k in r.params} if r.ci else None,
                      "converged": r.diagnostics["converged"]}))


if __name__ == "__main__":
    main()
