"""The run directory: resolved config, metrics log, summary and checkpoints, written so a kill never lies.

Layout (a public interface: analysis code and users' scripts read these names):
  config.yaml     the resolved config (written once, atomically, before training starts)
  metrics.jsonl   one JSON object per logged step; each line goes down in one O_APPEND write
  summary.json    written last, via rename; its presence with status completed means the run is done
  checkpoints/    orbax CheckpointManager steps (orbax finalises each step by an atomic rename)
  checkpoints_unreadable/   steps that failed to restore, moved aside when an older step restored instead

A write that fails for lack of space (or another storage error) raises StorageError, a ConfigError: the CLI
prints one line naming the run directory and the fix and exits 2; the run directory stays resumable.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from testbed import config as C
from testbed import faults

STATUSES = ("completed", "diverged", "failed")
# errnos of a full or failing disk: the fix is on the machine (free space, another --out), not in the config
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
STORAGE_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large")


class RunDirError(C.ConfigError):
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the fact as a string ("nan", "inf")
    if isinstance(v, dict):  # nested rows, e.g. sigma_max per matrix of a diverged run
        return {k: _jsonable(x) for k, x in v.items()}
    return v


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.checkpoint_dir = self.path / "checkpoints"

    # --- config ---------------------------------------------------------------------------------------
    def check_or_write_config(self, cfg: C.Config) -> None:
        """Writes config.yaml, or checks that an existing run directory holds the same resolved config."""
        if self.config_path.exists():
            try:
                existing = C.from_dict(yaml.safe_load(self.config_path.read_text()))
            except (C.ConfigError, yaml.YAMLError) as e:
                raise C.ConfigError(f"{self.config_path}: cannot be read as a testbed config ({e}); "
                                    "pass a new --out directory") from None
            if C.identity(existing) != C.identity(cfg):  # placement (train.mesh, ...) may change on resume
                diff = _diff(C.identity(existing), C.identity(cfg))
                raise C.ConfigError(f"--out {self.path}: the run directory holds a different config "
                                    f"({diff}); pass a new --out, or the same config to resume")
            return
        if self.path.exists() and not self.path.is_dir():
            raise C.ConfigError(f"--out {self.path}: exists and is not a directory; pass a new run directory")
        existed = self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_text(self.config_path, C.dump_yaml(cfg))
        except BaseException:
            if not existed and not any(self.path.iterdir()):
                self.path.rmdir()  # a failed first write (disk full) leaves no empty run directory behind
            raise

    def remove_stale_temps(self) -> None:
        """Drops temporary files of atomic writes that a killed process never renamed (only litter: the file
        they were to replace is whole, old or absent)."""
        for name in ("config.yaml", "metrics.jsonl", "summary.json"):
            for tmp in self.path.glob(f".{name}.tmp.*"):
                tmp.unlink(missing_ok=True)

    def load_config(self) -> C.Config:
        return C.from_dict(yaml.safe_load(self.config_path.read_text()))

    # --- metrics --------------------------------------------------------------------------------------
    def append_metrics(self, rows: list[dict]) -> None:
        """Appends whole lines with one write() on an O_APPEND descriptor: no torn line on a kill; a failed
        write (disk full) is cut back off before the error propagates."""
        if not rows:
            return
        data = "".join(json.dumps({k: _jsonable(v) for k, v in r.items()}) + "\n" for r in rows).encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                faults.point("append:metrics.jsonl", fd=fd, data=data)
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
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn tail (should not happen) ends the log
        return rows

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keeps rows with step <= last_step (those a resume from that checkpoint will not redo)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        if self.metrics_path.exists():
            atomic_write_text(self.metrics_path,
                              "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    # --- summary --------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        assert summary.get("status") in STATUSES, summary.get("status")
        atomic_write_text(self.summary_path,
                          json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n")

    def read_summary(self) -> dict | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def status(self) -> str:
        s = self.read_summary()
        if s is not None:
            return s["status"]
        return "pending" if not self.metrics_path.exists() else "incomplete"


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _diff(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} there, {vb!r} here"
    return ""
