"""Provenance: every run records the environment it ran in (summary.json, config.yaml's header), and `testbed
report` shows it and warns when the runs of one sweep differ in something that can change their numbers."""

from __future__ import annotations

import json
import platform
import socket
import subprocess

import jax
import yaml

from testbed import config as C
from testbed import provenance
from testbed.train import train

from .conftest import ROOT
from .test_report import synthetic_sweep

TINY = ROOT / "configs" / "tiny.yaml"


def test_a_run_records_versions_devices_host_command_and_git_state(tmp_path):
    cfg = C.load(TINY, ["model.d_model=32", "data.seq_len=16", "train.batch_size=4", "data.eval_sequences=8",
                        "train.steps=3", "train.eval_every=3", "optim.warmup_steps=1"])
    s = train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    p = s["provenance"]
    assert p["versions"]["jax"] == jax.__version__ and p["versions"]["python"] == platform.python_version()
    assert p["versions"]["optax"] and p["versions"]["flax"] and p["versions"]["orbax-checkpoint"]
    assert p["platform"] == platform.platform() and p["host"] == socket.gethostname()
    assert p["backend"] == "cpu" and p["device_kind"] == jax.devices()[0].device_kind
    assert p["device_count"] == jax.device_count() and p["process_count"] == 1
    assert "pytest" in p["command"] or "python" in p["command"]
    if (ROOT / ".git").exists():  # a checkout: the commit it ran and whether tracked files were modified
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert p["git_commit"] == head.strip() and isinstance(p["git_dirty"], bool)
    # config.yaml: the same block as a comment header; the config itself reads back unchanged
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.startswith("# written by testbed") and f"#   host: {socket.gethostname()}" in text
    assert f"jax {jax.__version__}" in text.split("\n\n")[0]
    assert C.from_dict(yaml.safe_load(text)) == cfg
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"] == p


def test_differences_name_the_key_and_the_runs_on_each_side():
    base = {"versions": {"jax": "0.7.1", "python": "3.11.9"}, "platform": "Linux", "device_kind": "cpu",
            "device_count": 1, "host": "a", "command": "x", "git_commit": "abc", "git_dirty": False}
    provs = {"r1": base, "r2": {**base, "host": "b", "command": "y"},
             "r3": {**base, "versions": {**base["versions"], "jax": "0.7.2"}, "git_dirty": True}, "old": {}}
    d = provenance.differences(provs)
    assert set(d) == {"versions.jax", "git_dirty"}  # host and command may differ; an old run is left out
    assert d["versions.jax"] == {"0.7.1": ["r1", "r2"], "0.7.2": ["r3"]}
    assert provenance.differences({"r1": base, "r2": {**base, "host": "b"}}) == {}


def test_report_shows_the_provenance_and_warns_when_runs_differ(tmp_path, cli):
    sweep = synthetic_sweep(tmp_path)
    runs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    for i, run in enumerate(runs):
        s = json.loads((run / "summary.json").read_text())
        jax_version = "0.7.2" if i == 0 else jax.__version__
        s["provenance"] = {"versions": {"jax": jax_version, "python": platform.python_version()},
                           "platform": platform.platform(), "backend": "cpu", "device_kind": "cpu",
                           "device_count": 1, "host": f"node{i % 2}", "command": f"testbed train {run}"}
        (run / "summary.json").write_text(json.dumps(s))
    r = cli("report", str(sweep), "--out", str(tmp_path / "rep"), "--kinds", "curves", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    (warning,) = [w for w in res["warnings"] if w.startswith("provenance")]
    assert "versions.jax" in warning and "0.7.2: 1 run" in warning and "host" not in warning
    assert res["provenance"]["hosts"] == ["node0", "node1"] and res["provenance"]["common"]["device_kind"] == "cpu"
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "id='provenance'" in page and "versions.jax" in page and "node1" in page
    text = cli("report", str(sweep), "--out", str(tmp_path / "rep"), "--kinds", "curves")
    assert "provenance:" in text.stdout and "WARNING provenance" in text.stdout


def test_a_multiline_command_stays_inside_the_comment_header():
    block = provenance.header({"command": "python -c 'import x\nx.run()\n'", "versions": {"jax": "1"}})
    assert all(line.startswith("#") for line in block.splitlines())
    assert yaml.safe_load(block + "seed: 3\n") == {"seed": 3}
