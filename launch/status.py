"""`testbed status SWEEP_DIR`: where a sweep stands, read from its files and claims (never from a server)."""

from __future__ import annotations

from pathlib import Path

from testbed.launch import claims, runner

from testbed.config import ConfigError
from testbed.runstore import RunDir
from testbed.sweepdir import SweepDir

ORDER = ("pending", "running", "incomplete", "completed", "diverged", "failed")


def run_row(run_dir: Path, name: str = "") -> dict:
    """One run: status, progress (step of total), latest losses and, while running, who trains it."""
    rd = RunDir(run_dir)
    row: dict = {"run_id": run_dir.name, "name": name, "status": runner.run_status(run_dir)}
    if row["status"] == "running":
        row["holder"] = claims.holder(run_dir)
    if not rd.has_config:
        return row
    summary = rd.read_summary() or {}
    last = rd.last_metrics()
    try:
        row["steps_total"] = rd.load_config().total_steps
    except (ConfigError, OSError):
        pass
    row["step"] = summary.get("steps", last.get("step", 0))
    row["train_loss"] = summary.get("final_train_loss", last.get("train_loss"))
    row["final_eval_loss"] = summary.get("final_eval_loss")
    row["wall_s"] = summary.get("wall_s", last.get("wall_s"))
    if row["status"] == "failed" and "error" in summary:
        row["error"] = summary["error"]
    return row


def sweep_status(sweep_dir: str | Path) -> dict:
    """{'sweep_dir', 'counts': {status: n}, 'runs': [row, ...]} for every run the directory knows."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise ConfigError(f"sweep directory {str(d)!r} does not exist; pass the --out of a testbed sweep")
    rows = [run_row(d / rid, name) for rid, name in SweepDir(d).run_names().items()]
    counts = {s: 0 for s in ORDER}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"sweep_dir": str(d), "runs_total": len(rows), "counts": counts, "runs": rows}


def format_status(report: dict) -> str:
    """Counts on one line, then one line per run."""
    head = ", ".join(f"{n} {s}" for s, n in report["counts"].items() if n) or "no runs"
    lines = [f"{report['sweep_dir']}: {report['runs_total']} runs: {head}"]
    table = [("run_id", "status", "step", "train_loss", "eval_loss", "name / holder")]
    for r in report["runs"]:
        who = r.get("holder") or {}
        extra = f"{who.get('host', '?')}:{who.get('pid', '?')} since {who.get('since', '?')}" if who else ""
        table.append((r["run_id"], r["status"], f"{r.get('step', 0)}/{r.get('steps_total', '?')}",
                      _num(r.get("train_loss")), _num(r.get("final_eval_loss")),
                      " ".join(x for x in (r.get("name", ""), extra, r.get("error", "")[:80]) if x)))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
