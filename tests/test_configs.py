"""Every example in configs/ loads: a run config validates, a sweep file expands (to the run count its header
states, where it states one) with every run's config valid."""

from __future__ import annotations

import re

import pytest
import yaml
from testbed.launch import sweep

from testbed import config as C

from .conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
COUNT = re.compile(r"^#.*?\b(\d[\d,]*) (?:short )?runs\b", re.M)  # "# ... 12 runs" in a header comment


def test_the_examples_are_all_here():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "isoflop.yaml", "wsd_branch.yaml", "schedules.yaml", "transfer_lr.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_or_sweep_expands(path):
    text = path.read_text()
    spec = yaml.safe_load(text)
    if not set(spec) & set(sweep.SPEC_KEYS) - {"name", "description", "resources"}:  # a run config
        cfg = C.load(path)
        assert cfg.model.d_model > 0 and cfg.train.batch_size > 0
        return
    runs = sweep.expand(path)
    assert runs and len({r.run_id for r in runs}) == len(runs)
    stated = COUNT.search(text)
    if stated:
        assert len(runs) == int(stated.group(1).replace(",", "")), f"{path.name}: header says {stated.group(0)!r}"
