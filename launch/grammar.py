"""The sweep file's value grammar, shared by launch/sweep.py and launch/designs.py: numbers written as YAML strings,
axes (a list of values or a log2 range), dotted-key mappings, the per-backend resources block."""

from __future__ import annotations

import math
import re
from typing import Any

from testbed.config import ConfigError

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def number(v: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; take numeric-looking strings as numbers (as `--set` does)."""
    if isinstance(v, str) and _NUMBER.match(v.strip()) and not v.strip().lstrip("+-").isdigit():
        return float(v)
    if isinstance(v, list):
        return [number(x) for x in v]
    if isinstance(v, dict):
        return {k: number(x) for k, x in v.items()}
    return v


def axis(where: str, key: str, value: Any) -> list:
    """An axis's values: a non-empty list, or {log2: [start, stop, step]} (stop inclusive, step default 1)."""
    if isinstance(value, dict):
        if set(value) != {"log2"}:
            raise ConfigError(f"{where}.{key}: a range is written {{log2: [start, stop, step]}}, got "
                              f"{value!r}; or give a list of values")
        r = value["log2"]
        if (not isinstance(r, list) or len(r) not in (2, 3)
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in r)):
            raise ConfigError(f"{where}.{key}: log2 takes [start, stop] or [start, stop, step] numbers, got {r!r}")
        start, stop, step = (*r, 1) if len(r) == 2 else r
        if step <= 0 or stop < start:
            raise ConfigError(f"{where}.{key}: log2 [{start}, {stop}, {step}] is empty; need step > 0 and "
                              "stop >= start")
        n = math.floor((stop - start) / step + 1e-9) + 1
        return [2.0 ** (start + i * step) for i in range(n)]
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: expected a list of values or {{log2: [start, stop, step]}}, "
                          f"got {value!r}")
    if not value:
        raise ConfigError(f"{where}.{key}: empty list; give at least one value (or remove the key)")
    return number(value)


def flatten(d: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}; dotted keys pass through."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def mapping(spec: dict, name: str, where: str) -> dict:
    """spec[name] as a mapping of dotted config keys ({} when absent)."""
    v = spec.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: '{name}' must be a mapping of dotted config keys, got {v!r}")
    return v


def check_zip(zipped: dict[str, list], where: str) -> None:
    """zip: lists of equal length (its keys vary together, row by row)."""
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ConfigError(f"{where}: zip lists must have equal lengths ({detail}); zip varies its keys "
                          "together, row by row (use grid: for a product)")


def check_disjoint(groups: dict[str, list[str]], where: str) -> None:
    """A dotted key (or a section above it) set in only one of set, grid, zip."""
    seen: dict[str, str] = {}
    for group, keys in groups.items():
        for key in keys:
            for other, og in seen.items():
                if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                    raise ConfigError(f"{where}: key '{key}' is in both {og} and {group}; a key may appear "
                                      "in only one of set, grid, zip")
            seen[key] = group


def resources(spec: dict, where: str) -> dict:
    """`resources: {slurm: {...submitit parameters}, ray: {...}}`: per-backend settings, checked by name."""
    res = mapping(spec, "resources", where)
    for k, v in res.items():
        if k not in ("local", "slurm", "ray") or not isinstance(v, dict):
            raise ConfigError(f"{where}: resources.{k}: expected resources.slurm or resources.ray mappings "
                              "(e.g. resources: {slurm: {timeout_min: 120, gpus_per_node: 1}})")
    return res
