"""Every table in docs/transfer.md and docs/recipes.md regenerates from its committed run table (docs/data/*.csv)
with the command printed above it: the doc shows a ```bash block holding one `testbed transfer|compare
docs/data/...csv ...` command, then a ```text block holding exactly what that command prints."""

from __future__ import annotations

import re
import shlex

import pytest
from testbed.launch.cli import main

from .conftest import ROOT

DOCS = {"transfer.md": 3, "recipes.md": 2}  # doc -> how many regenerable tables it must show at least
PAIR = re.compile(r"```bash\n(testbed (?:transfer|compare) docs/data/[^\n]+)\n```\n+```text\n(.*?)\n```", re.S)


def pairs(doc: str) -> list[tuple[str, str]]:
    return PAIR.findall((ROOT / "docs" / doc).read_text())


@pytest.mark.parametrize("doc", DOCS)
def test_the_doc_has_regenerable_tables(doc):
    found = pairs(doc)
    assert len(found) >= DOCS[doc], f"docs/{doc} should show its tables with the command that made them"
    for command, _ in found:
        assert "--plot" not in command and "--table" not in command, command  # read-only commands


@pytest.mark.parametrize("doc, command", [(d, c) for d in DOCS for c, _ in pairs(d)])
def test_table_matches_the_doc(doc, command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = dict(pairs(doc))[command]
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.rstrip("\n") == expected
