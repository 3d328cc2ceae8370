from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def testbed_cmd(*args: str, **kw) -> subprocess.CompletedProcess:
    """Runs the installed CLI the way a user does (python -m testbed.launch.cli, same interpreter)."""
    env = {**kw.pop("env", os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "testbed.launch.cli", *args], cwd=kw.pop("cwd", ROOT),
                          capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> dict:
    """One persistent JAX compilation cache for the session (keyed by program, jax version and flags), so the
    same programs (a tiny model's step, a law's fit) compiled again in later subprocesses are disk reads.
    (Not pytest's cache dir: CI runs with -p no:cacheprovider.)"""
    cache = tmp_path_factory.mktemp("jax_compilation_cache")
    return {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture
def cli(compilation_cache):
    """testbed_cmd with the session's compilation cache (a test passing env= chooses its own)."""
    return lambda *args, **kw: testbed_cmd(*args, **{"env": {**os.environ, **compilation_cache}, **kw})


@pytest.fixture(scope="session")
def jax_env(compilation_cache) -> dict:
    """Environment for jax subprocesses: unbuffered, CPU, and the session's compilation cache."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", **compilation_cache}
