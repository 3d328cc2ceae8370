"""Sweeps and published tables as one pandas DataFrame, so every fit reads the same columns whatever the source.

A sweep directory (run directories with config.yaml, summary.json, metrics.jsonl) and a CSV/parquet file (with the
user's column names mapped onto ours) both become one row per run with the standard columns below plus, for a
sweep, every config key flattened with dots. Diverged, failed and unfinished runs stay in the table, flagged by
`ok`, because a fit has to say how many runs it left out and why: `usable` returns the rows and that count.
`curves` gives one row per logged step (tokens, FLOPs, the LR applied, losses) for fits along the training curve.

Standard columns: N (params_total), N_nonembed, D (tokens trained), C (exact training FLOPs), C_6ND (6 N D),
loss (the chosen metric), train_loss, status, ok, run_id, run_dir; curves add step, tokens, flops, lr, eval_loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis.runtable import with_defaults

from testbed.config import ConfigError
from testbed.runstore import RunDir, flatten, number
from testbed.sweepdir import SweepDir

RUN_COLUMNS = ("run_id", "run_dir", "status", "ok", "N", "N_nonembed", "D", "C", "C_6ND", "loss", "train_loss")
CURVE_COLUMNS = ("step", "tokens", "flops", "lr", "train_loss", "eval_loss")
# err: a downstream error rate (testbed fit downstream); bs: batch size (testbed fit steplaw), in tokens, or in
# sequences with seq_len (a column, or a number: --columns bs=bs,seq_len=2048)
STANDARD = tuple(dict.fromkeys(RUN_COLUMNS + CURVE_COLUMNS + ("loss_se", "steps", "data_entropy", "err", "bs",
                                                                "seq_len")))
MAPPABLE = tuple(c for c in STANDARD if c != "ok")  # `ok` is always derived
NUMERIC = ("N", "N_nonembed", "D", "C", "C_6ND", "loss", "train_loss", "loss_se", "steps", "data_entropy", "err",
           "bs", "seq_len", *CURVE_COLUMNS)
# usable()'s exclusion reasons; every key is always present. A status other than completed/diverged/failed
# (no summary.json yet, "pending", ...) counts as incomplete; a completed run whose loss is NaN, inf or <= 0
# counts under the last key.
REASONS = ("diverged", "failed", "incomplete", "nonfinite_or_nonpositive_loss", "wsd_parent")
# a wsd_branch parent (launch/designs.py) ends at a branch step with its LR still at the peak: its curve feeds the
# children and the curve analyses, but its final loss is not a trained-to-the-end point, so fits leave it out
PARENT_ROLE = "parent"
SUFFIXES = (".csv", ".csv.gz", ".parquet")
FILTER_HELP = 'quote dotted names with backticks, e.g. --filter "`model.d_model` >= 64 and status == \'completed\'"'


# --- sweep directories --------------------------------------------------------------------------------------------
def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl rows (RunDir.read_metrics: a torn last line ends the log)."""
    return RunDir(run).read_metrics()


def _run_row(run: RunDir, metric: str) -> tuple[dict[str, Any], bool]:
    """One run's standard columns + flattened config, and whether its summary holds `metric`."""
    cfg = run.read_config_dict()
    s = run.summary_or_progress()  # unfinished: how far it got comes from the last logged step
    row = {"run_id": run.path.name, "run_dir": str(run.path), "status": str(s.get("status")),
           "N": number(s.get("params_total")), "N_nonembed": number(s.get("params_nonembedding")),
           "D": number(s.get("tokens")), "C": number(s.get("flops")), "loss": number(s.get(metric)),
           "train_loss": number(s.get("final_train_loss")), "loss_se": number(s.get(f"{metric}_se")),
           "steps": number(s.get("steps")), "data_entropy": number(s.get("data_entropy"))}
    return {**row, **with_defaults(flatten(cfg))}, metric in s


def _load_sweep(sweep_dir: Path, metric: str) -> pd.DataFrame:
    rows, has_metric, finished = [], False, 0
    sweep = SweepDir(sweep_dir)
    roles = {rid: (e.get("varied") or {}).get("role") for rid, e in sweep.manifest().get("runs", {}).items()}
    for run in sweep.runs(fix="pass a sweep directory or a CSV"):
        row, has = _run_row(run, metric)
        row["role"] = roles.get(run.path.name)
        rows.append(row)
        has_metric |= has
        finished += row["status"] != "incomplete"
    if finished and not has_metric:
        raise ConfigError(f"metric {metric}: no summary.json has it; use final_eval_loss or final_train_loss")
    return pd.DataFrame(rows)


def provenances(sweep_dir: str | Path) -> dict[str, dict]:
    """run id -> the provenance block of its summary.json ({} for a run without one: unfinished, or older)."""
    out = {}
    for run in SweepDir(Path(sweep_dir)).runs(fix="pass a sweep directory"):
        out[run.path.name] = (run.read_summary() or {}).get("provenance") or {}
    return out


# --- files --------------------------------------------------------------------------------------------------------
def _check_keys(columns: dict[str, str]) -> None:
    bad = [k for k in columns if k not in MAPPABLE]
    if bad:
        raise ConfigError(f"--columns {bad[0]}=...: not a standard name; map any of {', '.join(MAPPABLE)}")


def parse_columns(text: str | None) -> dict[str, str]:
    """The CLI form "N=Model Size,C=Training FLOP,loss=loss" -> {"N": "Model Size", ...} (names hold no commas)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, eq, col = (s.strip() for s in item.partition("="))
        if not eq or not key or not col:
            raise ConfigError(f"--columns {item!r}: expected STANDARD=FILE_COLUMN items separated by commas, "
                              "e.g. --columns 'N=Model Size,C=Training FLOP,loss=loss'")
        if key in out:
            raise ConfigError(f"--columns: {key} is mapped twice; map each standard name once")
        out[key] = col
    _check_keys(out)
    return out


def _constant(text: str) -> float | None:
    """A --columns value that is a number rather than a column name (e.g. seq_len=2048), else None."""
    try:
        return float(text)
    except ValueError:
        return None


def _scaled(text: str, df: pd.DataFrame) -> tuple[str, float] | None:
    """A --columns value COLUMN*NUMBER (e.g. C=total_gflops*1e9: units the file does not use), else None."""
    col, star, num = text.rpartition("*")
    if star and col.strip() in df.columns and _constant(num.strip()) is not None:
        return col.strip(), float(num)
    return None


def _read_file(path: Path, columns: dict[str, str] | None) -> pd.DataFrame:
    """A CSV/parquet table, the user's columns renamed to standard names, those numeric as floats (junk -> NaN)."""
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise ConfigError(f"{path}: unknown file type; pass a sweep directory or a {', '.join(SUFFIXES)} file")
    try:
        df = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
    except ImportError as e:
        raise ConfigError(f"{path}: reading parquet needs pyarrow ({e}); pip install pyarrow or pass a CSV") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: cannot be read as a table ({e})") from None
    columns = dict(columns or {})
    _check_keys(columns)
    constants = {std: _constant(col) for std, col in columns.items() if col not in df.columns}
    scaled = {std: sc for std, col in columns.items() if col not in df.columns and (sc := _scaled(col, df))}
    columns = {std: col for std, col in columns.items() if constants.get(std) is None and std not in scaled}
    for std, col in columns.items():
        if col not in df.columns:
            raise ConfigError(f"--columns {std}={col}: {path.name} has no column {col!r}; its columns: "
                              f"{', '.join(map(str, df.columns))}")
    # the user's mapping wins over a file column of the same standard name (Step Law's CSV has both `loss` and
    # `smooth loss`): that column is kept as "NAME (file)"
    shadowed = {std: f"{std} (file)" for std in columns if std in df.columns and std not in columns.values()}
    out = df.drop(columns=[c for c in set(columns.values()) if c not in columns]).rename(columns=shadowed)
    for std, col in columns.items():
        out[std] = df[col]
    for std, value in constants.items():
        if value is not None:  # --columns seq_len=2048: the same value on every row
            out[std] = value
    for std, (col, factor) in scaled.items():
        out[std] = pd.to_numeric(df[col], errors="coerce") * factor
    for c in NUMERIC:
        if c in out.columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


def _derive(df: pd.DataFrame) -> list[str]:
    """Fills N, D or C from C = 6 N D where the other two are given; returns what was derived."""
    derived = []
    if "N" not in df.columns and {"C", "D"} <= set(df.columns):
        df["N"] = df["C"] / (6 * df["D"])
        derived.append("N = C / (6 D)")
    if "D" not in df.columns and {"C", "N"} <= set(df.columns):
        df["D"] = df["C"] / (6 * df["N"])
        derived.append("D = C / (6 N)")
    if "C" not in df.columns and {"N", "D"} <= set(df.columns):
        df["C"] = 6 * df["N"] * df["D"]
        derived.append("C = 6 N D")
    return derived


# --- public -------------------------------------------------------------------------------------------------------
def _source(data: str | Path, columns: dict[str, str] | None) -> Path:
    path = Path(data)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a sweep directory or a {', '.join(SUFFIXES)} file")
    if path.is_dir() and columns:
        raise ConfigError(f"--columns applies to CSV/parquet input; {path} is a sweep directory with standard names")
    return path


def _finish(df: pd.DataFrame, filter: str | None, **attrs: Any) -> pd.DataFrame:
    """Standard columns first, the filter applied, attrs set."""
    first = [c for c in STANDARD if c in df.columns]
    df = df[first + sorted(c for c in df.columns if c not in first)]
    if filter:
        try:
            df = df.query(filter)
        except Exception as e:  # pandas raises anything from SyntaxError to UndefinedVariableError
            raise ConfigError(f"--filter {filter!r}: {type(e).__name__}: {e}; {FILTER_HELP}") from None
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    return df


def load(data: str | Path, *, columns: dict[str, str] | None = None, metric: str = "final_eval_loss",
         filter: str | None = None) -> pd.DataFrame:
    """One row per run from a sweep directory or a CSV/parquet file; `filter`: DataFrame.query, `dotted.names`."""
    path = _source(data, columns)
    attrs: dict[str, Any] = {"source": str(data), "derived": []}
    if path.is_dir():
        df = _load_sweep(path, metric)
        attrs["metric"] = metric
    else:
        df = _read_file(path, columns)
        if "loss" not in df.columns:
            raise ConfigError(f"{path.name} has no loss column; pass --columns loss=COL (its columns: "
                              f"{', '.join(map(str, df.columns))})")
        attrs["derived"] = _derive(df)
    if {"N", "D"} <= set(df.columns):
        df["C_6ND"] = 6 * df["N"] * df["D"]
    loss = df["loss"].to_numpy(float)
    ok = np.isfinite(loss) & (np.nan_to_num(loss) > 0)
    df["ok"] = ok & (df["status"] == "completed").to_numpy() if "status" in df.columns else ok
    if "role" in df.columns:
        df["ok"] &= (df["role"] != PARENT_ROLE).to_numpy()
    return _finish(df, filter, **attrs)


def curves(data: str | Path, *, columns: dict[str, str] | None = None, filter: str | None = None) -> pd.DataFrame:
    """One row per logged step per run (tokens, flops, the LR applied, losses; eval_loss NaN off eval steps)."""
    path = _source(data, columns)
    if path.is_file():
        df = _read_file(path, columns)
        return _finish(df, filter, source=str(data), derived=_derive(df))
    runs = load(path)
    rows = [{"run_id": run_id, **{k: r.get(k) for k in CURVE_COLUMNS}}
            for run_id, run_dir in zip(runs["run_id"], runs["run_dir"], strict=True) for r in _metrics(Path(run_dir))]
    steps = pd.DataFrame(rows, columns=["run_id", *CURVE_COLUMNS])
    for c in CURVE_COLUMNS:
        steps[c] = pd.to_numeric(steps[c], errors="coerce").astype(float)
    per_run = runs.drop(columns=[c for c in ("D", "C", "C_6ND", "loss", "train_loss", "loss_se", "steps")
                                 if c in runs.columns])
    return _finish(steps.merge(per_run, on="run_id", how="left", validate="many_to_one"), filter,
                   source=str(data), derived=[])


def usable(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows fits may use (ok True) and how many were excluded, by reason (keys: REASONS, always all present)."""
    bad = df[~df["ok"].astype(bool)]
    excluded = dict.fromkeys(REASONS, 0)
    status = bad["status"] if "status" in bad.columns else pd.Series("completed", index=bad.index)
    role = bad["role"] if "role" in bad.columns else pd.Series(None, index=bad.index, dtype=object)
    for s, r in zip(status, role, strict=True):
        if s != "completed":  # a run that did not finish says why, whatever its role
            excluded[s if s in REASONS else "incomplete"] += 1
        else:
            excluded["wsd_parent" if r == PARENT_ROLE else "nonfinite_or_nonpositive_loss"] += 1
    rows = df[df["ok"].astype(bool)].reset_index(drop=True)
    rows.attrs.update(df.attrs, excluded=excluded)
    return rows, excluded


def describe_exclusions(excluded: dict[str, int]) -> str:
    """A fit's note on what it left out, e.g. "excluded 3 runs: 2 diverged, 1 failed" ("" when none)."""
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in excluded.items() if n]
    n = sum(excluded.values())
    return f"excluded {n} run{'s' if n != 1 else ''}: {', '.join(parts)}" if parts else ""
