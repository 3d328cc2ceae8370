"""`testbed config`: every config key with its type, default (or resolved value) and one line of help.

The help is read from testbed/config.py itself: the comment on a field's line, after any comment lines directly
above it. The dataclasses are the only place a key is described, so this listing and the code cannot drift
(tests/test_configdoc.py fails when a key has no help).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize
import typing

from testbed import config
from testbed.config import Config

SECTIONS = {"model": config.ModelConfig, "param": config.ParamConfig, "data": config.DataConfig,
            "optim": config.OptimConfig, "train": config.TrainConfig}


def _comments(cls: type) -> dict[str, str]:
    """field name -> its help: the comment lines directly above the field, then the comment on its line."""
    src = inspect.getsource(cls)
    lines = src.splitlines()
    by_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(src).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, i = [], node.lineno - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, by_line[i])
            i -= 1
        inline = by_line.get(node.end_lineno, "") if not lines[node.end_lineno - 1].strip().startswith("#") else ""
        out[node.target.id] = " ".join(p for p in (*above, inline) if p)
    return out


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    return str(text).replace("typing.", "")


def keys(cfg: Config | None = None) -> list[dict]:
    """One row per key: key, type, default, help, and the resolved value when `cfg` is given."""
    rows = []
    resolved = config.to_dict(cfg) if cfg is not None else None
    top_help = _comments(Config)
    for name, f in ((f.name, f) for f in dataclasses.fields(Config)):
        if name in SECTIONS:
            cls = SECTIONS[name]
            helps = _comments(cls)
            hints = typing.get_type_hints(cls)
            default_obj = cls()
            for sub in dataclasses.fields(cls):
                row = {"key": f"{name}.{sub.name}", "type": _type_name(hints[sub.name]),
                       "default": getattr(default_obj, sub.name), "help": helps.get(sub.name, "")}
                choices = config.CHOICES.get(row["key"])
                if choices:
                    row["choices"] = list(choices)
                if resolved is not None:
                    row["value"] = resolved[name][sub.name]
                rows.append(row)
        else:
            row = {"key": name, "type": _type_name(typing.get_type_hints(Config)[name]), "default": f.default,
                   "help": top_help.get(name, "")}
            if resolved is not None:
                row["value"] = resolved[name]
            rows.append(row)
    return rows


def _show(v) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, list | dict) else str(v)


def format_keys(rows: list[dict]) -> str:
    """A table: key, type, default (and value, marked * where it differs), help."""
    with_value = rows and "value" in rows[0]
    out = []
    for r in rows:
        shown = _show(r["value"] if with_value else r["default"])
        mark = "*" if with_value and r["value"] != r["default"] else " "
        help_text = r["help"] + (f" [{' | '.join(map(_show, r['choices']))}]" if r.get("choices")
                                 and "|" not in r["help"] else "")
        out.append(f"{r['key']:<26} {r['type']:<18} {mark}{shown:<14} {help_text}")
    head = f"{'key':<26} {'type':<18} {'value' if with_value else 'default':<15} help"
    note = "\n(* differs from the default)" if with_value else ""
    return "\n".join([head, *out]) + note
