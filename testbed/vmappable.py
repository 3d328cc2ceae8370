"""Which configs can train together as one vmapped program (a pack): equal except in vmappable values.

Jax-free, so launchers can group runs into packs without importing the training code.

Vmappable, and reproduced exactly by testbed.pack (each member matches its one-by-one run):
  optim.lr, optim.weight_decay   injected hyperparameters in each member's optimizer state (optim.init)
  seed                           each member's own init key and data stream
  model.init_std, model.emb_std  read only at init, which happens per member
Not vmappable here: param.alpha_* and every other parametrization constant are Python floats baked into the
traced forward pass (testbed/model.py), so runs that differ in them compile to different programs.
"""

from __future__ import annotations

import hashlib
import json

from testbed import config

VMAPPABLE = ("optim.lr", "optim.weight_decay", "seed", "model.init_std", "model.emb_std")
# What testbed.pack does not implement (branch restores, kept checkpoint steps, device meshes, several hosts):
# a config that sets one of these trains alone, with testbed.train.
SOLO = {"train.branch_from": None, "train.checkpoint_steps": [], "train.mesh": {}}


def solo_reason(cfg: config.Config) -> str | None:
    """Why `cfg` cannot join a pack ('train.mesh is {...}'), or None."""
    for key, default in SOLO.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != default:
            return f"{key} is {value!r}"
    if cfg.train.distributed:
        return "train.distributed is true"
    return None


def _shape_dict(cfg: config.Config) -> dict:
    """The config with every vmappable value blanked: what must be equal within a pack."""
    d = config.to_dict(cfg)
    for key in VMAPPABLE:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = None
    return d


def pack_key(cfg: config.Config) -> str:
    """Equal for configs that can share one vmapped program; 12 hex digits."""
    text = json.dumps(_shape_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pack_conflict(cfgs: list[config.Config]) -> str | None:
    """The first non-vmappable key on which the configs differ ('key: a vs b'), or None if they can pack."""
    ref = _flat(_shape_dict(cfgs[0]))
    for i, cfg in enumerate(cfgs[1:], 1):
        other = _flat(_shape_dict(cfg))
        for k in sorted(set(ref) | set(other)):
            if ref.get(k) != other.get(k):
                return f"{k}: {ref.get(k)!r} in member 0 vs {other.get(k)!r} in member {i}"
    return None


def group_by_pack(cfgs: list[config.Config], max_pack: int) -> list[list[int]]:
    """Indices of `cfgs` grouped into packs of at most `max_pack` same-key configs, in first-seen order (a config
    with a solo_reason in a pack of its own)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg) if solo_reason(cfg) is None else f"solo{i}", []).append(i)
    return [idx[j:j + max_pack] for idx in groups.values() for j in range(0, len(idx), max(1, max_pack))]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "perlayer_c" and k not in ("lr_mult", "wd_mult"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
