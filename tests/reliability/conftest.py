from __future__ import annotations

import pytest

# Imported at collection, not first inside a test: testbed.launch.backends imports submitit, which attaches logging
# StreamHandlers to whatever sys.stdout/sys.stderr are at that moment; inside a capsys test those are pytest's
# capture files, closed at the test's end ("ValueError: I/O operation on closed file", then "lost sys.stderr" once
# optax/absl logging is loaded too). tests/test_claims.py does the same import at module level.
import testbed.launch.backends  # noqa: F401

from .common import train


@pytest.fixture(scope="session")
def reference(jax_env, tmp_path_factory):
    """The uninterrupted run every fault scenario must reproduce (trained once per session; its compiled programs
    land in jax_env's compilation cache, so the scenarios' processes start warm)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = train(out, jax_env)
    assert r.returncode == 0, r.stderr[-4000:]
    return out
