"""A persistent JAX compilation cache for the `testbed` commands, so a program compiled once is a disk read in every
later command: a Farseer fit compiles its solvers for ~25 s on a 2-core CPU and then runs in ~2 s; with the cache, a
second `testbed fit farseer` (or backtest, report) in a new process skips most of that compile.

JAX_COMPILATION_CACHE_DIR, when set, wins (sweep trainers get their sweep's own cache from launch/runner.py);
TESTBED_COMPILATION_CACHE=0 turns the default off. The cache is keyed by program, jax version and flags, so a stale
entry is never used, and it is capped (least recently used entries go first).
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 2 * 2**30  # the default cache's cap


def default_dir() -> Path:
    """$XDG_CACHE_HOME/testbed/jax, else ~/.cache/testbed/jax (beside the tokenizer and layout caches)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "testbed" / "jax"


def enable() -> str | None:
    """Points this process's JAX at the cache; returns its directory, or None when off or not writable."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]  # jax reads it itself
    if os.environ.get("TESTBED_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    path = default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None  # a read-only home: compile as before rather than warn on every write
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(path)
