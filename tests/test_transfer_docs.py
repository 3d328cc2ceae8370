"""Every transfer table in docs/transfer.md regenerates from its committed run table (docs/data/*.csv) with the
command printed above it: the doc shows a ```bash block holding one `testbed transfer docs/data/...csv ...` command,
then a ```text block holding exactly what that command prints."""

from __future__ import annotations

import re
import shlex

import pytest
from testbed.launch.cli import main

from .conftest import ROOT

DOC = ROOT / "docs" / "transfer.md"
PAIR = re.compile(r"```bash\n(testbed transfer docs/data/[^\n]+)\n```\n+```text\n(.*?)\n```", re.S)


def pairs() -> list[tuple[str, str]]:
    return PAIR.findall(DOC.read_text())


def test_the_doc_has_regenerable_tables():
    found = pairs()
    assert len(found) >= 3, "docs/transfer.md should show its transfer tables with the command that made them"
    for command, _ in found:
        assert "--plot" not in command and "--table" not in command, command  # read-only commands


@pytest.mark.parametrize("command", [c for c, _ in pairs()])
def test_table_matches_the_doc(command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = dict(pairs())[command]
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.rstrip("\n") == expected
