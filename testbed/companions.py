"""muP's companion settings, implied when a config asks for a muP-family parametrization but leaves them unset.

Switching `param.name` to mup on an SP config is not muP unless three other settings follow (Tensor Programs V,
Table 8 and its notes), so a user who sets only the name gets them, with a note, unless they set them explicitly:
- `model.zero_init_readout: true`: a random readout under muP's 1/m readout multiplier gives logits that shrink
  like 1/sqrt(m) at init, and the coordinate check fails on them.
- `param.base_head_dim: base_width // n_heads` when the head count is fixed (`model.head_dim` unset): the head size
  then grows with width and muP's attention is 1/d_head, not 1/sqrt(d_head), relative to the base head size.
- `optim.grad_clip: null`: clipping by the global norm rescales the update by a norm that grows with width.

Works on the raw mapping (before defaults), which is how "set explicitly" is known.
"""

from __future__ import annotations

from typing import Any

from testbed.parametrization import MUP_FAMILY


def _get(raw: dict, key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in a raw config mapping."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(raw: dict, key: str, value: Any) -> None:
    *sections, last = key.split(".")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value


def imply(raw: dict, defaults: dict[str, Any]) -> tuple[dict, list[str]]:
    """(raw with muP's companions filled in where unset, the `key=value` strings implied).

    `defaults` holds the dataclass defaults of param.name, param.base_width and model.n_heads.
    """
    name = _get(raw, "param.name")[1] if _get(raw, "param.name")[0] else defaults["param.name"]
    if name not in MUP_FAMILY:
        return raw, []
    implied: dict[str, Any] = {}
    if not _get(raw, "model.zero_init_readout")[0]:
        implied["model.zero_init_readout"] = True
    if not _get(raw, "optim.grad_clip")[0]:
        implied["optim.grad_clip"] = None
    if _get(raw, "model.head_dim")[1] is None and not _get(raw, "param.base_head_dim")[0]:
        base = _value(raw, "param.base_width", defaults)
        heads = _value(raw, "model.n_heads", defaults)
        if isinstance(base, int) and isinstance(heads, int) and heads > 0 and base % heads == 0:
            implied["param.base_head_dim"] = base // heads
    if not implied:
        return raw, []
    out = _deepcopy(raw)
    for key, value in implied.items():
        _set(out, key, value)
    return out, [f"{key}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                 for key, v in implied.items()]


def note(name: str, implied: list[str]) -> str:
    """The one line a command prints when companions were implied."""
    return (f"note: param.name={name} implies {', '.join(implied)} (muP's companions; set any of them "
            "explicitly to override)")


def _value(raw: dict, key: str, defaults: dict[str, Any]) -> Any:
    present, value = _get(raw, key)
    return value if present else defaults[key]


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deepcopy(v) for k, v in raw.items()}
    return raw
