"""`testbed config`: every key of the dataclasses, with its type, default, resolved value and help."""

from __future__ import annotations

import dataclasses
import json

from testbed import config as C
from testbed import configdoc

from .conftest import ROOT


def all_keys() -> set[str]:
    out = set()
    for f in dataclasses.fields(C.Config):
        if f.name in configdoc.SECTIONS:
            out |= {f"{f.name}.{g.name}" for g in dataclasses.fields(configdoc.SECTIONS[f.name])}
        else:
            out.add(f.name)
    return out


def test_every_key_is_listed_with_a_type_its_default_and_a_line_of_help():
    rows = configdoc.keys()
    assert {r["key"] for r in rows} == all_keys()
    missing = [r["key"] for r in rows if len(r["help"]) < 8]
    assert not missing, f"add a comment to these fields in testbed/config.py: {missing}"
    by_key = {r["key"]: r for r in rows}
    defaults = C.to_dict(C.Config())
    for key, r in by_key.items():
        section, _, name = key.partition(".")
        assert r["default"] == (defaults[section][name] if name else defaults[section]), key
    assert by_key["optim.lr"]["type"] == "float" and by_key["train.steps"]["type"] == "int | None"
    assert by_key["optim.schedule"]["choices"] == list(C.CHOICES["optim.schedule"])
    assert "peak learning rate" in by_key["optim.lr"]["help"]


def test_cli_resolves_a_config_and_its_overrides(cli):
    r = cli("config", str(ROOT / "configs" / "tiny.yaml"), "--set", "optim.lr=1e-3", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert rows["optim.lr"]["value"] == 1e-3 and rows["model.d_model"]["value"] == 64
    assert rows["model.d_model"]["default"] == 128
    text = cli("config", str(ROOT / "configs" / "tiny.yaml")).stdout
    assert "*64" in text and "model.d_model" in text and "differs from the default" in text
    plain = cli("config")
    assert plain.returncode == 0 and "default" in plain.stdout.splitlines()[0] and "differs" not in plain.stdout
    bad = cli("config", "--set", "optim.nope=1")
    assert bad.returncode == 2 and "optim.nope" in bad.stderr
