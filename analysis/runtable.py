"""A sweep's finished runs as a flat table, read from the run directories or from a CSV written by `write_csv`.

The CSV (one row per run: the config keys that vary, seed, the metric, status, run_dir, and per-run extras such as
the normalized sigma_max) is a few KB, so a doc's tables and figures can be regenerated from the repo without the
sweep directory. No JAX, no model code.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import config
from testbed.config import ConfigError
from testbed.runstore import atomic_write_text, flatten, number
from testbed.sweepdir import SweepDir

FIXED_COLUMNS = ("seed", "status", "run_dir")
EXTRA_COLUMNS = ("sigma_norm_hidden",)  # per-run numbers from summary.json that are not config keys


@dataclass
class RunTable:
    """Finished runs as flat rows (dotted config keys, run_dir, status, metric) plus the unfinished run dirs."""

    sweep_dir: Path
    metric: str
    rows: list[dict[str, Any]]
    config_keys: list[str]
    unfinished: list[str] = field(default_factory=list)


@functools.cache
def _defaults() -> dict[str, Any]:
    return flatten(config.to_dict(config.Config()))


def with_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """A run's flattened config with the keys added since it was written (e.g. optim.name) at their defaults, so
    runs from before and after a new key compare as equal where they are."""
    return {**_defaults(), **flat}


def sigma_norm_hidden(summary: dict) -> float | None:
    """Geometric mean over a run's hidden matrices (those in blocks) of sigma_max / (sqrt(eta/lambda) d^0.75)."""
    values = [v for name, v in (summary.get("final_sigma_normalized") or {}).items()
              if name.startswith("block") and v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def load_runs(sweep_dir: str | Path, metric: str = "final_eval_loss") -> RunTable:
    """Reads every SWEEP_DIR/*/config.yaml (+ summary.json when finished) into a RunTable."""
    sweep = SweepDir(sweep_dir)
    rows, unfinished, keys, has_metric = [], [], set(), False
    for run in sweep.runs():
        summary = run.read_summary()
        if summary is None:
            unfinished.append(run.path.name)
            continue
        flat = with_defaults(flatten(run.read_config_dict()))
        keys.update(flat)
        has_metric |= metric in summary
        rows.append({**flat, "run_dir": run.path.name, "status": summary.get("status"),
                     metric: number(summary.get(metric)), "sigma_norm_hidden": sigma_norm_hidden(summary)})
    if not rows:
        raise ConfigError(f"{sweep.path}: none of its {len(unfinished)} run directories has finished "
                          "(no summary.json); wait for the sweep or check its logs")
    if not has_metric:
        raise ConfigError(f"metric {metric}: no summary.json has it; use final_eval_loss or final_train_loss")
    return RunTable(sweep.path, metric, rows, sorted(keys), unfinished)


def load(source: str | Path, metric: str = "final_eval_loss") -> RunTable:
    """A sweep directory or a .csv table written by `write_csv`."""
    path = Path(source)
    if path.suffix.lower() == ".csv":
        return load_csv(path, metric)
    return load_runs(path, metric)


def varying_keys(table: RunTable) -> list[str]:
    """Config keys that take more than one value across the finished runs."""
    return [k for k in table.config_keys
            if k not in FIXED_COLUMNS and len({json.dumps(r.get(k), sort_keys=True) for r in table.rows}) > 1]


def write_csv(table: RunTable, path: str | Path, keep: tuple[str, ...] = ()) -> Path:
    """One row per run, finished or not: the varying config keys (and `keep`), seed, metric, extras, status, run_dir."""
    keys = [k for k in table.config_keys if k in keep and k not in FIXED_COLUMNS] + varying_keys(table)
    keys = list(dict.fromkeys(keys))
    extras = [c for c in EXTRA_COLUMNS if any(r.get(c) is not None for r in table.rows)]
    columns = [*keys, "seed", table.metric, *extras, "status", "run_dir"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in sorted(table.rows, key=lambda r: [_sort_key(r.get(c)) for c in columns]):
        writer.writerow([_cell(r.get(c)) for c in columns])
    for name in sorted(table.unfinished):
        writer.writerow([_cell(None)] * (len(columns) - 2) + ["unfinished", name])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    return out


def load_csv(path: Path, metric: str = "final_eval_loss") -> RunTable:
    """The RunTable a `write_csv` file holds; rows with status `unfinished` count as unfinished runs."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass a sweep directory or a .csv written by "
                          "`testbed transfer SWEEP --table FILE.csv`")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("seed", metric, "status") if c not in columns]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; a run table needs seed, {metric} "
                              f"and status (written by `testbed transfer SWEEP --table FILE.csv`); it has "
                              f"{', '.join(columns) or 'none'}")
        rows, unfinished = [], []
        for i, raw in enumerate(reader):
            if raw.get("status") == "unfinished":
                unfinished.append(raw.get("run_dir") or f"row {i + 2}")
                continue
            row = {c: _parse(v) for c, v in raw.items()}
            row[metric] = number(row[metric])
            row["run_dir"] = raw.get("run_dir") or f"row {i + 2}"
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no finished run in the table")
    keys = [c for c in columns if c not in (metric, "status", "run_dir", *EXTRA_COLUMNS)]
    return RunTable(path, metric, rows, sorted(keys), unfinished)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _parse(text: str | None) -> Any:
    """A CSV cell back to the value it was written from (int, float, bool, None, JSON list/dict or str)."""
    if text is None or text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _sort_key(v: Any) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, "" if v is None else str(v))
