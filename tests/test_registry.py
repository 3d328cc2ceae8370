"""analysis/registry.py: one table of the laws testbed fit knows, read by the CLI's help and the fit dispatch."""

from __future__ import annotations

import pytest
from testbed.analysis import fitplots, registry, tablefits
from testbed.launch.cli import build_parser

from testbed.config import ConfigError


def test_every_entry_names_a_fit_and_a_figure_that_exist():
    for e in registry.ENTRIES:
        assert e.description and e.needs, e.name
        if not e.point:
            assert callable(getattr(tablefits, f"fit_{e.name}")), e.name
    for name in ("law", "optima", "annealing", "overtrain", "downstream", "steplaw", "critbatch"):
        assert callable(getattr(fitplots, f"plot_{name}"))


def test_unknown_law_and_refusals_name_the_choices():
    with pytest.raises(ConfigError, match="LAW: unknown 'chinchila'; choose one of chinchilla, chinchilla-vp"):
        registry.get("chinchila")
    with pytest.raises(ConfigError, match="--predict: only for chinchilla, chinchilla-vp, kaplan, farseer and auto"):
        registry.run("isoflop", "unused.csv", predict="N=1,D=2")


def test_cli_help_lists_the_registry():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fit = sub.choices["fit"]
    assert next(a for a in fit._actions if a.dest == "law").help == " | ".join(registry.names())
    assert all(name in fit.epilog for name in registry.names())
