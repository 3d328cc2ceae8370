"""Do the example sweeps in configs/ give the analysis they are named for? Sweep (or reuse), report, check.
    python bench/examples.py isoflop|ladder|wsd_branch [--runs runs] [--run] [--check]
--run trains the example into RUNS/NAME first (`testbed sweep configs/NAME.yaml --workers 2`; a finished sweep
resumes in seconds); without it the sweep must already be there. Then `testbed report` draws the example's figures,
and one JSON line says, per analysis, whether its fit converged and what it resolved. --check exits 1 unless each
holds (bench/bands.py; 3 when the sweep is absent and --run was not given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import bands  # bench/bands.py

from testbed import hardware

ROOT = Path(__file__).resolve().parents[1]


FIT_NAMES = {"isoflop": "IsoFLOP fit", "overtrain": "over-training law", "compute": "Chinchilla fit (compute)",
             "holdout": "held-out fit", "schedules": "annealing fit (schedules, one model size)"}


def converged(sections: dict, *kinds: str) -> list[dict]:
    """One band per report section: its fit converged."""
    return [bands.band(f"{FIT_NAMES[k]} converged", float(sections[k]["fit"]["diagnostics"]["converged"]), 1.0, 1.0)
            for k in kinds]


def isoflop_checks(sections: dict, sweep_dir: Path) -> list[dict]:
    """configs/isoflop.yaml: a parabola vertex inside the sampled widths at every budget, converged Approach 2 and 3
    fits (and the held-out and LR-annealing fits), and an envelope (Approach 1) that more than two sizes win."""
    budgets = sections["isoflop"]["fit"]["derived"]["budgets"]
    env = sections["envelope"]["fit"]["diagnostics"]
    return [
        bands.band("IsoFLOP budgets whose vertex is interior", sum(b["interior"] for b in budgets) / len(budgets),
                   1.0, 1.0),
        *converged(sections, "isoflop", "compute", "holdout", "schedules"),
        bands.band("distinct N winning an envelope bin", env["distinct_N_winning"], 3),
    ]


def ladder_checks(sections: dict, sweep_dir: Path) -> list[dict]:
    """configs/ladder.yaml: the over-training law converged on three lines of constant D/N with a compute-optimal
    multiplier (M_opt) it can place, and the Chinchilla, held-out and (widest rung's) annealing fits converged."""
    m_opt = sections["overtrain"]["fit"]["derived"]["M_opt"]
    return [
        *converged(sections, "overtrain"),
        bands.band("over-training law's M_opt is finite and positive", float(0 < m_opt < float("inf")), 1.0, 1.0),
        *converged(sections, "compute", "holdout", "schedules"),
    ]


def wsd_branch_checks(sections: dict, sweep_dir: Path) -> list[dict]:
    """configs/wsd_branch.yaml: each width's cooldowns give a loss that falls with D; the widest width's longest
    cooldown ends where a whole WSD run of its length does (trained here, ~30 s; reused from RUNS/wsd_branch_alone
    when there), which is what lets one parent stand in for a run per budget; the Chinchilla, held-out and
    annealing fits on the children converged."""
    from testbed.analysis import load

    rows, _ = load.usable(load.load(sweep_dir))
    falls = all(g.sort_values("D")["loss"].is_monotonic_decreasing for _, g in rows.groupby("N"))
    child = rows.sort_values(["N", "D"]).iloc[-1]
    alone = sweep_dir.parent / f"{sweep_dir.name}_alone"
    p = testbed("train", str(Path(child["run_dir"]) / "config.yaml"), "--set", "train.branch_from=null", "--set",
                "train.branch_step=null", "--out", str(alone), "--no-progress")
    if p.returncode:
        sys.exit(f"testbed train (the independent run) failed ({p.returncode}): {p.stderr[-2000:]}")
    alone_loss = json.loads((alone / "summary.json").read_text())["final_eval_loss"]
    return [
        bands.band("every width's loss falls with each longer cooldown", float(falls), 1.0, 1.0),
        bands.band("longest cooldown vs an independent run: |rel. difference|", abs(child["loss"] / alone_loss - 1),
                   0.0, 1e-4),
        *converged(sections, "compute", "holdout", "schedules"),
    ]


# name -> (the report figures the example is for, its checks)
EXAMPLES = {"isoflop": ("isoflop,compute,holdout,envelope,schedules", isoflop_checks),
            "ladder": ("overtrain,compute,holdout,schedules", ladder_checks),
            "wsd_branch": ("curves,compute,holdout,schedules", wsd_branch_checks)}


def testbed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.launch.cli", *args], cwd=ROOT, capture_output=True,
                          text=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(EXAMPLES))
    ap.add_argument("--runs", default="runs", help="directory holding the example sweeps (default runs)")
    ap.add_argument("--run", action="store_true", help="train the sweep first (resumes a partial one)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every analysis of the example holds")
    a = ap.parse_args(argv)
    kinds, checks = EXAMPLES[a.name]
    sweep_dir = Path(a.runs) / a.name
    t0, sweep_s = time.perf_counter(), None
    if a.run:
        p = testbed("sweep", f"configs/{a.name}.yaml", "--out", str(sweep_dir), "--workers", "2")
        if p.returncode:
            sys.exit(f"testbed sweep failed ({p.returncode}): {p.stderr[-2000:]}")
        sweep_s = round(time.perf_counter() - t0, 1)
    if not any(sweep_dir.glob("*/summary.json")):
        if a.check:
            bands.not_measurable(f"{sweep_dir}: no sweep here (add --run, or testbed sweep configs/{a.name}.yaml)")
        ap.error(f"{sweep_dir}: no sweep here (add --run)")
    t1 = time.perf_counter()
    p = testbed("report", str(sweep_dir), "--kinds", kinds, "--json")
    if p.returncode:
        sys.exit(f"testbed report failed ({p.returncode}): {p.stderr[-2000:]}")
    report = json.loads((sweep_dir / "report" / "report.json").read_text())
    items = checks(report["sections"], sweep_dir)
    print(json.dumps({"example": a.name, "sweep_dir": str(sweep_dir), "sweep_s": sweep_s,
                      "report_s": round(time.perf_counter() - t1, 1), "drawn": json.loads(p.stdout)["drawn"],
                      "warnings": json.loads(p.stdout)["warnings"], "machine": hardware.machine(),
                      "checks": {i["claim"]: i["value"] for i in items}}))
    return bands.verdict(items) if a.check else 0


if __name__ == "__main__":
    sys.exit(main())
