"""The persistent compilation cache of the `testbed` commands (testbed/compile_cache.py): on by default under
~/.cache/testbed/jax (XDG_CACHE_HOME), JAX_COMPILATION_CACHE_DIR wins, TESTBED_COMPILATION_CACHE=0 turns it off."""

from __future__ import annotations

import json
import os

import pandas as pd

from testbed import compile_cache

from .test_fit import chinchilla_points


def test_a_fit_command_fills_the_default_cache(tmp_path, cli):
    X, y = chinchilla_points()
    csv = tmp_path / "points.csv"
    pd.DataFrame({"N": X[:, 0], "D": X[:, 1], "loss": y}).to_csv(csv, index=False)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    r = cli("fit", "chinchilla", str(csv), "--json", env={**env, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 0 and json.loads(r.stdout)["law"] == "chinchilla", r.stderr
    assert os.listdir(tmp_path / "xdg" / "testbed" / "jax")  # the solvers' programs, for the next command to read


def test_an_explicit_cache_directory_wins_and_off_means_off(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.enable() == str(tmp_path / "mine")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TESTBED_COMPILATION_CACHE", "off")
    assert compile_cache.enable() is None and not (tmp_path / "xdg").exists()
    assert compile_cache.default_dir() == tmp_path / "xdg" / "testbed" / "jax"
