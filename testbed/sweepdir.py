"""The sweep directory: one run directory per run id (testbed.runstore's layout), plus two files of its own.

  <run_id>/       a run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/)
  sweep.yaml      the latest sweep, resolved (launch/sweep.py writes it)
  manifest.json   every run ever added to the directory: {"runs": {run_id: {"name", "varied"}}}

With testbed.runstore, the only code that spells these names: the analysis, `testbed status` and the sweep
runner find and read runs through SweepDir.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from testbed import config
from testbed.runstore import RunDir, atomic_write_text, dumps

MANIFEST, SPEC = "manifest.json", "sweep.yaml"


class SweepDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST
        self.spec_path = self.path / SPEC

    def run(self, run_id: str) -> RunDir:
        """The run directory of `run_id` (it need not exist yet)."""
        return RunDir(self.path / run_id)

    def run_dirs(self) -> list[RunDir]:
        """The subdirectories holding a config.yaml, by name; [] when there are none."""
        return [RunDir(p) for p in sorted(self.path.iterdir()) if RunDir.is_run(p)]

    def runs(self, fix: str = "pass a sweep directory") -> list[RunDir]:
        """run_dirs(), or a ConfigError saying what to pass instead: the directory is missing, is a run directory,
        or holds no runs (`fix` ends that message)."""
        if not self.path.is_dir():
            raise config.ConfigError(f"sweep directory {self.path} does not exist; pass the directory whose "
                                     "subdirectories are the sweep's run directories")
        runs = self.run_dirs()
        if not runs:
            if RunDir.is_run(self.path):
                raise config.ConfigError(f"{self.path} is a run directory, not a sweep directory: pass its parent")
            raise config.ConfigError(f"no run directories (config.yaml) under {self.path}; {fix}")
        return runs

    def run_names(self) -> dict[str, str]:
        """Run id -> name: every run in manifest.json, then any run directory not listed there (name "")."""
        names = {rid: entry.get("name", "") for rid, entry in self.manifest().get("runs", {}).items()}
        for run in self.run_dirs():
            names.setdefault(run.path.name, "")
        return names

    # --- the sweep's own files -------------------------------------------------------------------------------
    def manifest(self) -> dict:
        """manifest.json, {} before the first sweep wrote it."""
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def add_to_manifest(self, entries: Iterable[tuple[str, dict]]) -> None:
        """Adds (run id, {"name", "varied"}) entries to manifest.json; a run already listed keeps its entry."""
        manifest = self.manifest()
        runs = manifest.get("runs", {})
        for run_id, entry in entries:
            runs.setdefault(run_id, entry)
        manifest["runs"] = runs
        atomic_write_text(self.manifest_path, dumps(manifest, indent=2) + "\n")

    def write_spec(self, text: str) -> None:
        """sweep.yaml, atomically."""
        atomic_write_text(self.spec_path, text)
