"""train.trackers: TensorBoard event files (read back here) and wandb hold every scalar of metrics.jsonl; a sweep is
one wandb group; `testbed export` replays runs; a tracker whose library is missing is a clear exit 2."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from testbed import config as C
from testbed import trackers
from testbed.config import ConfigError
from testbed.train import train

from .conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["model.d_model=32", "data.seq_len=16", "train.batch_size=4", "data.eval_sequences=8", "train.steps=12",
        "train.eval_every=4", "train.sigma_every=6", "optim.weight_decay=0.1", "optim.warmup_steps=3"]


def read_events(logdir: Path) -> tuple[dict[tuple[str, int], float], list[str]]:
    """{(tag, step): value} of every scalar in the event files under logdir (TFRecord framing: length, crc, data,
    crc), and the plugin names of the other summaries (hparams)."""
    scalars, plugins = {}, []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    scalars[(v.tag, event.step)] = v.simple_value
                elif v.metadata.plugin_data.plugin_name:
                    plugins.append(v.metadata.plugin_data.plugin_name)
    return scalars, plugins


def jsonl_scalars(run: Path) -> dict[tuple[str, int], float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(tag, r["step"]): v for r in rows for tag, v in trackers.scalars(r).items()}


def assert_same(tb: dict, want: dict) -> None:
    assert set(tb) == set(want), (set(want) - set(tb), set(tb) - set(want))
    for key, v in want.items():
        assert tb[key] == pytest.approx(v, rel=1e-6, abs=1e-30), key  # event files hold float32


def test_tensorboard_event_files_hold_every_scalar_of_metrics_jsonl(tmp_path, cli):
    cfg = C.load(TINY, [*FAST, "train.trackers=[jsonl, tensorboard]"])
    run = tmp_path / "run"
    s = train(cfg, run, progress=False, log=lambda _: None)
    assert s["status"] == "completed"
    want = jsonl_scalars(run)
    tags = {tag for tag, _ in want}
    assert {"train_loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"} <= tags
    assert any(t.startswith("sigma_max/block_0/") for t in tags) and len(want) > 12 * 8
    tb, plugins = read_events(run / "tensorboard")
    assert_same(tb, want)
    assert "hparams" in plugins  # the resolved config, for TensorBoard's HParams tab
    # the trackers are not part of the run's identity: the same run without them resumes (here: is already done)
    assert C.run_id(cfg) == C.run_id(C.load(TINY, FAST))
    # export rebuilds the view from metrics.jsonl alone
    for f in (run / "tensorboard").iterdir():
        f.unlink()
    r = cli("export", str(run), "--to", "tensorboard")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == len((run / "metrics.jsonl").read_text().splitlines())
    assert_same(read_events(run / "tensorboard")[0], want)


class FakeWandb(types.ModuleType):
    """wandb's surface the tracker uses (init -> run.log(step=) / run.finish()), recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.runs = []

    def init(self, **kwargs):
        run = types.SimpleNamespace(kwargs=kwargs, logged=[], finished=False)
        run.log = lambda data, step: run.logged.append((step, data))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


def test_wandb_gets_the_config_the_sweep_group_and_every_row(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(trackers, "check_installed", lambda cfg: None)
    sweep = tmp_path / "my_sweep"
    cfg = C.load(TINY, [*FAST, "train.trackers=[wandb]", "train.wandb_mode=offline", "train.wandb_project=proj"])
    sweep.mkdir()
    (sweep / "manifest.json").write_text(json.dumps({"runs": {"abc123": {"name": "d_model=32,lr=0.001"}}}))
    train(cfg, sweep / "abc123", progress=False, log=lambda _: None)
    (run,) = fake.runs
    kw = run.kwargs
    assert kw["project"] == "proj" and kw["group"] == "my_sweep" and kw["mode"] == "offline"
    assert kw["name"] == "abc123 d_model=32,lr=0.001" and kw["id"] == "my_sweep-abc123"
    assert kw["config"]["optim.lr"] == cfg.optim.lr and kw["config"]["model.d_model"] == 32
    assert kw["dir"] == str(sweep / "abc123") and run.finished
    got = {(tag, step): v for step, data in run.logged for tag, v in data.items()}
    assert got == jsonl_scalars(sweep / "abc123")


def test_a_missing_tracker_library_or_an_unknown_tracker_is_a_config_error(tmp_path, monkeypatch, cli):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = C.load(TINY, [*FAST, "train.trackers=[jsonl, wandb]"])
    with pytest.raises(ConfigError, match=r"pip install 'scaling-testbed\[wandb\]'"):
        train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    r = cli("train", str(TINY), "--set", "train.trackers=[tensorbord]", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "train.trackers" in r.stderr and "tensorboard" in r.stderr
