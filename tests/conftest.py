from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def testbed_cmd(*args: str, **kw) -> subprocess.CompletedProcess:
    """Runs the installed CLI the way a user does (python -m testbed.cli, same interpreter)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=kw.pop("cwd", ROOT),
                          capture_output=True, text=True, env=env, **kw)


@pytest.fixture
def cli():
    return testbed_cmd
