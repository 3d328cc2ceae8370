"""Live views of a run: TensorBoard and Weights & Biases mirror metrics.jsonl, which stays the source of truth.

`train.trackers: [jsonl, tensorboard, wandb]` (jsonl is always written). Only process 0 writes (the loop opens
trackers on the primary process only). A tracker is a derived view, so it is rebuilt from metrics.jsonl whenever
a run (re)starts: TensorBoard's event files in RUN/tensorboard are rewritten from the file, then each appended row
follows, so TensorBoard holds exactly what metrics.jsonl holds, across kills, resumes and branches. A sweep is one
TensorBoard parent directory (`tensorboard --logdir SWEEP`) and one wandb group (the sweep directory's name); the
resolved config goes in as hyperparameters; each run is named by its swept values (manifest.json).
`testbed export RUN_OR_SWEEP --to tensorboard|wandb` replays finished runs the same way.
Neither library is a dependency: `pip install 'scaling-testbed[tensorboard]'` (tensorboardX) or
`'scaling-testbed[wandb]'` (from a checkout: `pip install -e '.[tracking]'` for both).
"""

from __future__ import annotations

import json
import math
import shutil
from typing import Any, Protocol

from testbed.config import Config, ConfigError, to_dict
from testbed.runstore import RunDir, flatten
from testbed.sweepdir import MANIFEST

TB_DIR = "tensorboard"
INSTALL = {"tensorboard": "pip install 'scaling-testbed[tensorboard]'", "wandb": "pip install 'scaling-testbed[wandb]'"}



class Tracker(Protocol):
    def log(self, rows: list[dict]) -> None: ...
    def close(self) -> None: ...


def scalars(row: dict) -> dict[str, float]:
    """A metrics row's numbers by tag, nested ones as 'sigma_max/block_0/mlp/up/kernel'; step is left out
    (it is the x axis); non-finite values are kept (a diverged run's last row is what it is)."""
    out = {}
    for key, value in flatten(row).items():  # dotted keys; sigma_max's parameter names use '/' already
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key.replace(".", "/", 1) if key.startswith("sigma_max.") else key] = float(value)
    return out


def hyperparams(cfg: Config) -> dict[str, Any]:
    """The resolved config as flat hyperparameters (dotted keys; lists and None as text)."""
    return {k: v if isinstance(v, int | float | str | bool) else json.dumps(v) for k, v in
            flatten(to_dict(cfg)).items()}  # tuples (lists) and None as JSON text


def run_label(run: RunDir) -> tuple[str | None, str]:
    """(group, name): the sweep directory's name and the run's swept values when the run sits in a sweep, else
    (None, the run directory's name)."""
    manifest = run.path.parent / MANIFEST
    if manifest.is_file():
        try:
            entry = json.loads(manifest.read_text()).get("runs", {}).get(run.path.name, {})
        except (OSError, ValueError):
            entry = {}
        name = entry.get("name") or ""
        return run.path.parent.name, f"{run.path.name} {name}".strip()
    return None, run.path.name


class TensorBoard:
    """RUN/tensorboard, rewritten from `rows` (metrics.jsonl so far) at open, then appended to."""

    def __init__(self, run: RunDir, cfg: Config, rows: list[dict]):
        try:
            from tensorboardX import SummaryWriter
            from tensorboardX.summary import hparams
        except ImportError:
            raise ConfigError(f"train.trackers: tensorboard needs tensorboardX; {INSTALL['tensorboard']}") from None
        logdir = run.path / TB_DIR
        shutil.rmtree(logdir, ignore_errors=True)  # a derived view: rebuilt from metrics.jsonl
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=10)
        hp = {k: v for k, v in hyperparams(cfg).items() if v is not None}
        for summary in hparams(hp, {"eval_loss": math.nan}):  # the HParams tab: runs of a sweep side by side
            self.writer.file_writer.add_summary(summary)
        self.log(rows)

    def log(self, rows: list[dict]) -> None:
        for row in rows:
            for tag, value in scalars(row).items():
                self.writer.add_scalar(tag, value, global_step=int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A wandb run (id = the run directory's name, resumable), its files under RUN/wandb; at open it logs the rows
    it has not seen (all of them for a fresh run or branch; after a resume, those past `start`)."""

    def __init__(self, run: RunDir, cfg: Config, rows: list[dict], start: int, resumed: bool):
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"train.trackers: wandb needs the wandb package; {INSTALL['wandb']}") from None
        group, name = run_label(run)
        kwargs = {"mode": cfg.train.wandb_mode} if cfg.train.wandb_mode else {}
        self.run = wandb.init(project=cfg.train.wandb_project, group=group, name=name, id=_wandb_id(run),
                              config=hyperparams(cfg), dir=str(run.path), resume="allow", reinit="create_new",
                              **kwargs)
        self.log([r for r in rows if not resumed or r["step"] > start])

    def log(self, rows: list[dict]) -> None:
        for row in rows:
            self.run.log(scalars(row), step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


def _wandb_id(run: RunDir) -> str:
    """The sweep's run id (a config hash) prefixed by the sweep's name: unique within a project."""
    group, _ = run_label(run)
    return f"{group}-{run.path.name}" if group else run.path.name


def open_all(cfg: Config, run: RunDir, start: int = 0, resumed: bool = False) -> list[Tracker]:
    """The trackers cfg asks for (jsonl needs none: RunDir writes it), fed metrics.jsonl up to `start`."""
    names = [t for t in dict.fromkeys(cfg.train.trackers) if t != "jsonl"]
    if not names:
        return []
    rows = run.read_metrics()
    out: list[Tracker] = []
    for name in names:
        out.append(TensorBoard(run, cfg, rows) if name == "tensorboard" else WandB(run, cfg, rows, start, resumed))
    return out


def check_installed(cfg: Config) -> None:
    """ConfigError naming the install command when a requested tracker's library is missing (before training)."""
    import importlib.util

    for name, module in (("tensorboard", "tensorboardX"), ("wandb", "wandb")):
        if name in cfg.train.trackers and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.trackers: {name} needs the {module} package; {INSTALL[name]}")


def export(run: RunDir, to: str, cfg: Config) -> int:
    """Replays a run's metrics.jsonl into a tracker (`testbed export`); returns the rows sent."""
    rows = run.read_metrics()
    tracker: Tracker = TensorBoard(run, cfg, rows) if to == "tensorboard" else WandB(run, cfg, rows, 0, False)
    tracker.close()
    return len(rows)
