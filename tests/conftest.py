from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# submitit configures logging at import (logging.config.dictConfig), which closes every existing handler. absl's
# handler (installed when jax is first imported) writes to whatever sys.stderr was then, which under pytest is the
# capture file: an in-test `import submitit` after jax would close pytest's own capture and kill the worker
# ("lost sys.stderr"). Importing it here, before any test module imports jax, makes that close a no-op.
import submitit  # noqa: F401,E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def testbed_cmd(*args: str, **kw) -> subprocess.CompletedProcess:
    """Runs the installed CLI the way a user does (python -m testbed.launch.cli, same interpreter)."""
    env = {**kw.pop("env", os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "testbed.launch.cli", *args], cwd=kw.pop("cwd", ROOT),
                          capture_output=True, text=True, env=env, **kw)


CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def pytest_configure(config):
    """One persistent JAX compilation cache for the whole session (keyed by program, jax version and flags), set in
    the environment before any worker starts: xdist workers, in-process JAX and every subprocess share it, so a
    program (a tiny model's step, a Farseer solver: ~25 s to compile) is compiled once per session, not per process.
    Not pytest's cache dir (CI runs with -p no:cacheprovider); never the user's ~/.cache/testbed/jax."""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("TESTBED_TEST_JAX_CACHE_OWNER"):
        return  # a worker: the controller set it up
    import tempfile

    os.environ.update({"TESTBED_TEST_JAX_CACHE_OWNER": str(os.getpid()),
                       "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="testbed-jax-cache-"),
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    config._testbed_jax_cache = os.environ["JAX_COMPILATION_CACHE_DIR"]


# the test files with the most work (minutes each on 2 cores; CI's --durations shows them), scheduled first: the
# workers take whole files in collection order (--dist loadfile with --no-loadscope-reorder: xdist would otherwise
# put the files with the most tests first), so a long file started last would leave the other worker idle while
# it finishes
HEAVY_FIRST = ("test_quickstart", "test_sharding", "test_backtest_published", "test_diagnostics", "test_fit",
               "test_report", "test_kill_resume", "test_farseer", "test_backends", "test_compare", "test_designs",
               "test_simulate", "test_nextruns", "test_train", "test_pack")


def pytest_xdist_auto_num_workers(config):
    """One worker per core plus one on small machines (up to --maxprocesses): a worker waiting on its CLI
    subprocess, or compiling on one thread, leaves a core idle that a third worker fills."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1 if cores <= 2 else cores


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a file's tests keep their order


def pytest_unconfigure(config):
    import shutil

    path = getattr(config, "_testbed_jax_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def compilation_cache() -> dict:
    """The session's compilation cache settings (see pytest_configure), for subprocesses given their own env."""
    return {k: os.environ[k] for k in CACHE_ENV}


@pytest.fixture
def cli(compilation_cache):
    """testbed_cmd with the session's compilation cache (a test passing env= chooses its own)."""
    return lambda *args, **kw: testbed_cmd(*args, **{"env": {**os.environ, **compilation_cache}, **kw})


@pytest.fixture(scope="session")
def jax_env(compilation_cache) -> dict:
    """Environment for jax subprocesses: unbuffered, CPU, and the session's compilation cache."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", **compilation_cache}
