"""`--check` for the bench scripts: each measured number against the band docs/claims.md states for it.

A script run with --check prints one more JSON line, {"check": [{"claim", "value", "band", "held"}...], "held"},
and exits 0 when every number is inside its band, 1 when one is not, 3 when it cannot be measured here (data or
runs it needs are absent). bench/claims.py runs every check the ledger names and reads these codes. Timings are
held only as ratios measured in the same run (ours against a baseline), never as absolute seconds.
"""

from __future__ import annotations

import json
import sys

HELD, NOT_HELD, NOT_MEASURABLE = 0, 1, 3


def band(claim: str, value: float, lo: float = float("-inf"), hi: float = float("inf")) -> dict:
    """One number and the band it must fall in (inclusive)."""
    return {"claim": claim, "value": round(float(value), 6), "band": [lo, hi], "held": bool(lo <= value <= hi)}


def verdict(items: list[dict]) -> int:
    """Print the check line; the exit code bench/claims.py reads."""
    held = all(i["held"] for i in items)
    print(json.dumps({"check": items, "held": held}), flush=True)
    return HELD if held else NOT_HELD


def not_measurable(why: str) -> None:
    """Exit with NOT_MEASURABLE and the reason (e.g. the runs a check reads are not on this machine)."""
    print(json.dumps({"check": [], "held": None, "not_measurable": why}), flush=True)
    sys.exit(NOT_MEASURABLE)
