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


def implied(raw: dict, defaults: dict[str, Any]) -> dict[str, Any]:
    """{key: value} of muP's companions the raw mapping leaves unset (empty unless param.name is muP-family).

    `defaults` holds the dataclass defaults of param.name, param.base_width and model.n_heads.
    """
    if _value(raw, "param.name", defaults) not in MUP_FAMILY:
        return {}
    out: dict[str, Any] = {}
    if not _get(raw, "model.zero_init_readout")[0]:
        out["model.zero_init_readout"] = True
    if not _get(raw, "optim.grad_clip")[0]:
        out["optim.grad_clip"] = None
    if _get(raw, "model.head_dim")[1] is None and not _get(raw, "param.base_head_dim")[0]:
        base, heads = _value(raw, "param.base_width", defaults), _value(raw, "model.n_heads", defaults)
        if isinstance(base, int) and isinstance(heads, int) and heads > 0 and base % heads == 0:
            out["param.base_head_dim"] = base // heads
    return out


def note(name: str, implied: dict[str, Any]) -> str:
    """The one line a command prints when companions were implied."""
    shown = ", ".join(f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                      for k, v in implied.items())
    return f"note: param.name={name} implies {shown} (muP's companions; set any of them explicitly to override)"


def _value(raw: dict, key: str, defaults: dict[str, Any]) -> Any:
    present, value = _get(raw, key)
    return value if present else defaults[key]
