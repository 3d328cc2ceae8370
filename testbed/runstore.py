"""The run directory: resolved config, metrics log, summary and checkpoints, written so a kill never lies.

Layout (a public interface: analysis code and users' scripts read these names):
  config.yaml     the resolved config (written once, atomically, before training starts)
  metrics.jsonl   one JSON object per logged step; each line goes down in one O_APPEND write
  summary.json    written last, via rename; its presence with status completed means the run is done
  checkpoints/    orbax CheckpointManager steps (orbax finalises each step by an atomic rename)
  checkpoints_unreadable/   steps that failed to restore, moved aside when an older step restored instead

A write that fails for lack of space (or another storage error) raises StorageError, a ConfigError: the CLI
prints one line naming the run directory and the fix and exits 2; the run directory stays resumable.

This module is the only code that spells these names (testbed.sweepdir adds the sweep directory's). JSON has no
NaN/Inf: `jsonable`/`dumps`, the one encoder behind every file and every --json output, writes them as the strings
"nan", "inf", "-inf", and `number` reads them back as floats.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from testbed import config, faults, provenance

CONFIG, METRICS, SUMMARY, CHECKPOINTS = "config.yaml", "metrics.jsonl", "summary.json", "checkpoints"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads a 1000-run sweep ~10x faster
STATUSES = ("completed", "diverged", "failed")
# errnos of a full or failing disk: the fix is on the machine (free space, another --out), not in the config
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
STORAGE_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large")


class RunDirError(config.ConfigError):
    """The run directory's state stops training (its checkpoints cannot be read, or it cannot be written). A
    ConfigError, so the CLI prints one line and exits 2 instead of a traceback; no summary is written for it."""


class StorageError(RunDirError):
    """The run directory could not be written (disk full, quota, read-only, I/O error); the same command resumes
    once there is space."""


def storage_error(e: BaseException) -> bool:
    """Whether `e` is a full or failing disk (an OSError errno, or orbax/tensorstore's message for one)."""
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return True
    return any(m in str(e) for m in STORAGE_MESSAGES)


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename, so readers see the old file or the whole new one; a failed write leaves no temp file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def jsonable(v: Any) -> Any:
    """Strict JSON values: dicts (keys as strings), lists; tuples and numpy arrays as lists, numpy scalars as
    Python ones, Paths as strings, NaN/Inf as the strings "nan", "inf", "-inf" (JSON has none; `number` reads
    them back). The one encoder: run files, manifests and every --json output go through it."""
    if isinstance(v, dict):
        return {k if isinstance(k, str) else str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Path):
        return str(v)
    return v


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of jsonable(obj) (kwargs: indent, default, ...); never writes a bare NaN."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def number(v: Any) -> float:
    """A value the store wrote (summary number, YAML value) as a float: "nan"/"inf" strings decode to NaN/inf;
    missing, boolean and non-numeric values are NaN."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config -> dotted keys (`optim.lr`); lists become tuples so every value can key a group."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.metrics_path = self.path / METRICS
        self.summary_path = self.path / SUMMARY
        self.checkpoint_dir = self.path / CHECKPOINTS

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether `path` is a run directory (it holds a config.yaml)."""
        return (Path(path) / CONFIG).is_file()

    @property
    def has_config(self) -> bool:
        return self.config_path.is_file()

    # --- config ---------------------------------------------------------------------------------------
    def check_or_write_config(self, cfg: config.Config, devices: dict | None = None) -> None:
        """Writes config.yaml (headed by the writer's provenance, with `devices` when known), or checks that an
        existing run directory holds the same resolved config."""
        if self.config_path.exists():
            try:
                existing = config.from_dict(yaml.safe_load(self.config_path.read_text()))
            except (config.ConfigError, yaml.YAMLError) as e:
                raise config.ConfigError(f"{self.config_path}: cannot be read as a testbed config ({e}); "
                                         "pass a new --out directory") from None
            if config.identity(existing) != config.identity(cfg):  # placement (train.mesh, ...) may change on resume
                diff = config_diff(config.identity(existing), config.identity(cfg))
                raise config.ConfigError(f"--out {self.path}: the run directory holds a different config "
                                         f"({diff}); pass a new --out, or the same config to resume")
            return
        if self.path.exists() and not self.path.is_dir():
            raise config.ConfigError(f"--out {self.path}: exists and is not a directory; pass a new run directory")
        existed = self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_text(self.config_path, provenance.header(provenance.collect(devices)) + config.dump_yaml(cfg))
        except BaseException:
            if not existed and not any(self.path.iterdir()):
                self.path.rmdir()  # a failed first write (disk full) leaves no empty run directory behind
            raise

    def remove_stale_temps(self) -> None:
        """Drops temporary files of atomic writes that a killed process never renamed (only litter: the file
        they were to replace is whole, old or absent)."""
        for name in (CONFIG, METRICS, SUMMARY):
            for tmp in self.path.glob(f".{name}.tmp.*"):
                tmp.unlink(missing_ok=True)

    def load_config(self) -> config.Config:
        return config.from_dict(yaml.safe_load(self.config_path.read_text()))

    def read_config_dict(self) -> dict:
        """config.yaml as a plain mapping (what the analysis groups runs by); a broken file is a ConfigError."""
        try:
            cfg = yaml.load(self.config_path.read_text(), Loader=YAML_LOADER)
        except yaml.YAMLError as e:
            raise config.ConfigError(f"{self.config_path}: not valid YAML ({e}); remove or fix the run") from None
        if not isinstance(cfg, dict):
            raise config.ConfigError(f"{self.config_path}: must hold a mapping; remove or fix the run")
        return cfg

    # --- metrics --------------------------------------------------------------------------------------
    def append_metrics(self, rows: list[dict]) -> None:
        """Appends whole lines with one write() on an O_APPEND descriptor: no torn line on a kill; a failed
        write (disk full) is cut back off before the error propagates."""
        if not rows:
            return
        data = "".join(dumps(r) + "\n" for r in rows).encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                faults.point(f"append:{METRICS}", fd=fd, data=data)
                n = 0
                while n < len(data):  # a short write (a filling disk): the next write raises its errno
                    w = os.write(fd, data[n:])
                    if w <= 0:
                        raise OSError(errno.ENOSPC, f"short write to {self.metrics_path}")
                    n += w
            except BaseException:
                os.ftruncate(fd, size)  # no torn line left behind (shrinking needs no space)
                raise
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict]:
        """Every logged row, in order; a torn last line (a kill mid-write, which O_APPEND should prevent) ends it."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn tail (should not happen) ends the log
        return rows

    def last_metrics(self) -> dict:
        """The last complete row, read from the file's tail (logs of long runs are large); {} when none."""
        if not self.metrics_path.exists():
            return {}
        with open(self.metrics_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
        for line in reversed(lines):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        return {}

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keeps rows with step <= last_step (those a resume from that checkpoint will not redo)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        if self.metrics_path.exists():
            atomic_write_text(self.metrics_path,
                              "".join(dumps(r) + "\n" for r in rows))
        return rows

    # --- summary --------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        assert summary.get("status") in STATUSES, summary.get("status")
        atomic_write_text(self.summary_path, dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict | None:
        """summary.json, None while the run has none; a broken file is a ConfigError naming it."""
        if not self.summary_path.is_file():
            return None
        try:
            out = json.loads(self.summary_path.read_text())
        except json.JSONDecodeError as e:
            raise config.ConfigError(f"{self.summary_path}: not valid JSON ({e}); remove or fix the run") from None
        if not isinstance(out, dict):
            raise config.ConfigError(f"{self.summary_path}: must hold a mapping; remove or fix the run")
        return out

    def summary_or_progress(self) -> dict:
        """summary.json, or for a run without one how far it got, from its last logged row: status incomplete,
        tokens, flops, final_train_loss, steps (None where nothing was logged)."""
        s = self.read_summary()
        if s is None:
            last = (self.read_metrics() or [{}])[-1]
            s = {"status": "incomplete", "tokens": last.get("tokens"), "flops": last.get("flops"),
                 "final_train_loss": last.get("train_loss"), "steps": last.get("step")}
        return s

    def status(self) -> str:
        s = self.read_summary()
        if s is not None:
            return s["status"]
        return "pending" if not self.metrics_path.exists() else "incomplete"


def config_diff(a: dict, b: dict, prefix: str = "") -> str:
    """The first key (sorted, dotted) where two nested config dicts differ, as `key: A there, B here`; "" if none."""
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = config_diff(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} there, {vb!r} here"
    return ""
