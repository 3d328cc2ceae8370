"""Run every bench check docs/claims.md names and print one line per ledger row: held / not held / not measurable.
    python bench/claims.py [--data DIR] [--runs DIR] [--only TEXT] [--skip TEXT] [--list] [--timeout S]
A row is checked here when its "held by" cell names a `python bench/SCRIPT.py ... --check` command (bench/bands.py:
exit 0 inside every band, 1 outside one, 3 when it cannot be measured here). Each distinct command runs once and
its verdict goes to every row that names it. In the commands, DATA stands for --data (the published tables) and RUNS
for --runs (the sweep directories, default runs/). Some checks are slow: the quickstart ~10 min, the sweep layout
~7 min, the published-sweep backtests ~35 min on 2 CPU cores (--skip them, or --only one). Exit code: 1 if any row
is not held, else 0.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import bands  # bench/bands.py

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "docs" / "claims.md"
CHECK_CMD = re.compile(r"`(python bench/[\w./-]+\.py[^`]*--check[^`]*)`")
WORD = {bands.HELD: "held", bands.NOT_HELD: "not held", bands.NOT_MEASURABLE: "not measurable here"}


def ledger_rows(path: Path = LEDGER) -> list[dict]:
    """Rows of the ledger's tables whose "held by" cell names a bench --check command: claim, section, command."""
    rows, section = [], ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("| ") else []
        if len(cells) >= 5:
            for cmd in CHECK_CMD.findall(cells[3]):
                rows.append({"section": section, "claim": cells[0], "command": cmd})
    return rows


def run_check(command: str, data: str | None, runs: str, timeout: float) -> dict:
    """One check command, placeholders filled in; its verdict from the exit code and its last JSON line."""
    argv = [a.replace("RUNS", runs) for a in shlex.split(command)]
    if any("DATA" in a for a in argv):
        if not data:
            return {"verdict": "not measurable here", "why": "needs --data DIR (the published tables)"}
        argv = [a.replace("DATA", data) for a in argv]
    argv[0] = sys.executable
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"verdict": "not held", "why": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    last = next((json.loads(x) for x in reversed(p.stdout.splitlines()) if x.startswith('{"check"')), {})
    verdict = WORD.get(p.returncode, "not held") if last or p.returncode == 0 else "not held"
    why = last.get("not_measurable") or "; ".join(
        f"{i['claim']} = {i['value']:.4g} (band {i['band'][0]:.4g}..{i['band'][1]:.4g})"
        for i in last.get("check", []) if verdict == "held" or not i["held"])
    if p.returncode not in WORD or (p.returncode == bands.NOT_HELD and not last):  # a crash, not a verdict
        why = f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else 'no output'}"
    return {"verdict": verdict, "why": why, "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="directory holding the published tables (DATA in the commands)")
    ap.add_argument("--runs", default="runs", help="directory holding the example sweeps (RUNS; default runs)")
    ap.add_argument("--only", action="append", help="run only commands containing this text (repeatable)")
    ap.add_argument("--skip", action="append", help="skip commands containing this text (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the rows and their commands; run nothing")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command (default 3600)")
    args = ap.parse_args(argv)
    rows = ledger_rows()
    commands = list(dict.fromkeys(r["command"] for r in rows))
    chosen = [c for c in commands if (not args.only or any(t in c for t in args.only))
              and not any(t in c for t in args.skip or [])]
    results = {}
    for cmd in chosen:
        if not args.list:
            print(f"running: {cmd}", file=sys.stderr, flush=True)
            results[cmd] = run_check(cmd, args.data, args.runs, args.timeout)
    failed = 0
    for r in rows:
        res = results.get(r["command"]) or {"verdict": "listed" if args.list else "skipped", "why": ""}
        failed += res["verdict"] == "not held"
        print(f"{res['verdict']:20s} | {r['section']}: {r['claim'][:90]} | {r['command']}"
              + (f" | {res['why']}" if res.get("why") else ""))
    print(json.dumps({"rows": len(rows), "commands": len(commands), "ran": len(results), "not_held": failed,
                      **{w: sum(1 for r in rows if results.get(r["command"], {}).get("verdict") == w)
                         for w in ("held", "not measurable here")}}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
