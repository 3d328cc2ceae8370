"""Sweep designs: a sweep file's `design:` block expanded into runs (points), for the experiments of scaling work.

    design:
      type: isoflop          # isoflop | ladder | transfer | wsd_branch
      ...                    # the type's keys (below)

Shapes (isoflop, ladder, wsd_branch) come from the ladder in testbed/shapes.py, one rung per width:
  widths: [32, 64, 128]      # d_model per rung
  depth: 2 | depths: [1, 2, 4] (one per width) | aspect_ratio: 32 (depth = width / ratio); default: the base's
  head_dim: 16               # n_heads = width // head_dim (default: the base's head size); ffn_ratio: 4 (d_ff)
or an explicit list `shapes: [{d_model: 32, n_layers: 2, n_heads: 2}, ...]` (model keys).

- isoflop: `budgets: [C1, C2, ...]` FLOPs. For each budget and shape, D = C / flops_per_token with the EXACT
  per-token FLOPs of testbed/shapes.py (attention and readout included, not 6N), train.steps = round(D / tokens per
  step); so C = D * flops_per_token within half a step's FLOPs. Points under `min_steps` (default 1) or under the
  warmup are dropped, each with a message.
- ladder: one run per rung with `tokens: D` (fixed) or `tokens_per_param: r` (D = r * N, N = `n_params: total`
  or `nonembedding`); either may be a list (crossed with the rungs).
- transfer: `lr: [..] | {log2: [start, stop, step]}` x `widths` (x `parametrizations: [sp, mup]`), head size fixed
  (`head_dim`), so n_heads follows width: exactly the runs of grid {optim.lr, param.name} x zip {d_model, n_heads}.
- wsd_branch: per shape, one constant-LR parent and, for each `tokens: [D1, D2, ...]`, a WSD child whose cooldown
  (`cooldown_frac` of its steps, default 0.2; `cooldown_shape`, `final_lr_frac` optional) starts at its branch step
  s = steps - round(cooldown_frac * steps): the child starts from the parent's checkpoint at s (train.branch_from,
  testbed/branch.py) and trains the cooldown only. The parent runs to the last s and keeps a checkpoint at each.
  With `budgets: [C1, C2, ...]` instead of `tokens`, each shape's children sit on isoFLOP budgets (D = C / exact
  flops_per_token, as isoflop): an IsoFLOP grid whose runs of one shape share their stable phase (per shape
  0.8 D_max + 0.2 sum D instead of sum D tokens). Parents are curves, not points: fits leave them out.

Design points are crossed with the sweep's grid and zip (e.g. seeds); a config key may be set by only one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.launch import grammar

from testbed import config, shapes
from testbed.config import ConfigError

Build = Callable[[dict], config.Config]  # overrides -> the validated config (base + set + grid point + overrides)
Log = Callable[[str], None]

SHAPE_KEYS = ("widths", "depths", "depth", "aspect_ratio", "head_dim", "ffn_ratio", "shapes")
KEYS = {
    "isoflop": ("budgets", "min_steps", *SHAPE_KEYS),
    "ladder": ("tokens", "tokens_per_param", "n_params", "min_steps", *SHAPE_KEYS),
    "transfer": ("lr", "widths", "head_dim", "parametrizations"),
    "wsd_branch": ("tokens", "budgets", "cooldown_frac", "cooldown_shape", "final_lr_frac", "min_steps", *SHAPE_KEYS),
}
REQUIRED = {"isoflop": ("budgets",), "ladder": (), "transfer": ("lr", "widths"), "wsd_branch": ()}


@dataclass(frozen=True)
class Point:
    overrides: dict  # dotted config keys -> values, applied after base + set + grid point
    varied: dict  # what the dry-run table and the manifest show (may hold non-config keys such as budget)
    parent: int | None = None  # index of the point this one branches from (sweep.py sets train.branch_from)


@dataclass(frozen=True)
class Rung:
    overrides: dict
    varied: dict = field(default_factory=dict)


# --- checking the block (at load time, before anything runs) ----------------------------------------------

def check(raw: Any, where: str) -> dict:
    """The design block validated and normalized (numbers parsed, ranges expanded); ConfigError naming the field."""
    if not isinstance(raw, dict) or "type" not in raw:
        raise ConfigError(f"{where}: design must be a mapping with a type ({', '.join(KEYS)}), got {raw!r}")
    kind = raw["type"]
    if kind not in KEYS:
        raise ConfigError(f"{where}: design.type: unknown {kind!r}; choose one of {', '.join(KEYS)}")
    d = {"type": kind, **{k: grammar.number(v) for k, v in raw.items() if k != "type"}}
    for k in d:
        if k != "type" and k not in KEYS[kind]:
            raise ConfigError(f"{where}: design.{k}: not a key of a {kind} design; its keys are "
                              f"{', '.join(KEYS[kind])}")
    for k in REQUIRED[kind]:
        if k not in d:
            raise ConfigError(f"{where}: design.{k}: a {kind} design needs it (see launch/designs.py)")
    if kind == "transfer":
        d["lr"] = grammar.axis(f"{where}: design", "lr", d["lr"])
    _check_shapes(d, kind, where)
    for k in ("budgets", "tokens", "tokens_per_param"):
        if k in d:
            d[k] = _positive_list(d[k], f"{where}: design.{k}")
    if kind == "ladder" and ("tokens" in d) == ("tokens_per_param" in d):
        raise ConfigError(f"{where}: design.tokens / design.tokens_per_param: a ladder needs exactly one (a fixed "
                          "D, or D = tokens_per_param x N)")
    if kind == "wsd_branch" and ("tokens" in d) == ("budgets" in d):
        raise ConfigError(f"{where}: design.tokens / design.budgets: a wsd_branch design needs exactly one (token "
                          "counts for every shape, or FLOP budgets: an IsoFLOP grid, D = C / flops_per_token)")
    if d.get("n_params", "total") not in ("total", "nonembedding"):
        raise ConfigError(f"{where}: design.n_params: {d['n_params']!r} is not total or nonembedding")
    for k in ("min_steps", "head_dim", "ffn_ratio", "depth"):
        _positive(d, k, where, integer=True)
    _positive(d, "aspect_ratio", where)
    frac = d.get("cooldown_frac", 0.2)
    if not (isinstance(frac, int | float) and 0 < frac < 1):
        raise ConfigError(f"{where}: design.cooldown_frac: must be in (0, 1) (e.g. 0.2), got {frac!r}")
    names = d.get("parametrizations", ["sp"])
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: design.parametrizations: a non-empty list of param.name values, e.g. "
                          f"[sp, mup], got {names!r}")
    return d


def _positive(d: dict, key: str, where: str, integer: bool = False) -> None:
    """d[key], when present, is a positive number (an integer if asked)."""
    v = d.get(key, 1)
    kind = int if integer else int | float
    if not isinstance(v, kind) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{where}: design.{key}: must be a positive {'integer' if integer else 'number'}, "
                          f"got {v!r}")


def _positive_list(v: Any, where: str) -> list:
    """A number or a non-empty list of positive numbers, as a list."""
    vs = v if isinstance(v, list) else [v]
    if not vs or not all(isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in vs):
        raise ConfigError(f"{where}: expected a positive number or a non-empty list of them, got {v!r}")
    return vs


def _check_shapes(d: dict, kind: str, where: str) -> None:
    """widths (with at most one of depth, depths, aspect_ratio) or an explicit shapes list."""
    if kind == "transfer":
        _int_list(d["widths"], f"{where}: design.widths")
        return
    if ("widths" in d) == ("shapes" in d):
        raise ConfigError(f"{where}: design.widths / design.shapes: give exactly one (widths for the ladder of "
                          "testbed/shapes.py, or an explicit list of model shapes)")
    if "shapes" in d:
        extra = [k for k in ("depths", "depth", "aspect_ratio", "head_dim", "ffn_ratio") if k in d]
        if extra or not isinstance(d["shapes"], list) or not d["shapes"] or not all(
                isinstance(s, dict) and s for s in d["shapes"]):
            raise ConfigError(f"{where}: design.shapes: a non-empty list of model-key mappings, e.g. "
                              "[{d_model: 32, n_layers: 2, n_heads: 2}], without widths/depth/head_dim keys")
        return
    widths = _int_list(d["widths"], f"{where}: design.widths")
    if sum(k in d for k in ("depth", "depths", "aspect_ratio")) > 1:
        raise ConfigError(f"{where}: design.depth / depths / aspect_ratio: give at most one")
    if "depths" in d and len(_int_list(d["depths"], f"{where}: design.depths")) != len(widths):
        raise ConfigError(f"{where}: design.depths: one depth per width ({len(widths)} widths, "
                          f"{len(d['depths'])} depths); use shapes: for any other combination")


def _int_list(v: Any, where: str) -> list[int]:
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                   for x in v):
        raise ConfigError(f"{where}: expected a non-empty list of positive integers, got {v!r}")
    return v


# --- expansion ----------------------------------------------------------------------------------------------

def expand(d: dict, build: Build, where: str, log: Log) -> list[Point]:
    """The design's points, in order (a wsd_branch parent before its children)."""
    return {"isoflop": _isoflop, "ladder": _ladder, "transfer": _transfer, "wsd_branch": _wsd_branch}[d["type"]](
        d, build, f"{where}: design {d['type']}", log)


def rungs(d: dict, base: config.Config, where: str) -> list[Rung]:
    """The model shapes of a design: ladder rungs from widths, or the explicit shapes list."""
    if "shapes" in d:
        out = []
        for s in d["shapes"]:
            ov = {k if k.startswith("model.") else f"model.{k}": v for k, v in s.items()}
            out.append(Rung(ov, dict(ov)))
        return out
    m = base.model
    head_dim = d.get("head_dim", m.resolved_head_dim)
    ffn = d.get("ffn_ratio", m.resolved_d_ff // m.d_model if m.resolved_d_ff % m.d_model == 0 else 4)
    out = []
    for i, w in enumerate(d["widths"]):
        depth = d["depths"][i] if "depths" in d else d.get("depth")
        if depth is None and "aspect_ratio" not in d:
            depth = m.n_layers
        try:
            shape = shapes.ladder(w, aspect_ratio=d.get("aspect_ratio"), depth=depth, head_dim=head_dim, ffn_ratio=ffn)
        except ValueError as e:
            raise ConfigError(f"{where}: widths: {e}; pick widths divisible by head_dim {head_dim}") from None
        ov = {f"model.{k}": v for k, v in shape.items()}
        out.append(Rung(ov, {"model.d_model": w, "model.n_layers": shape["n_layers"]}))
    return out


def _built(build: Build, overrides: dict, where: str, varied: dict) -> config.Config:
    """build(overrides) with the point named in any error."""
    try:
        return build(overrides)
    except ConfigError as e:
        at = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in varied.items())
        raise ConfigError(f"{where} ({at}): {e}") from None


def _steps(tokens: float, cfg: config.Config) -> int:
    """Tokens -> optimizer steps, to the nearest step."""
    return int(round(tokens / cfg.tokens_per_step))


def _too_short(steps: int, cfg: config.Config, min_steps: int) -> str | None:
    """Why a point with this many steps cannot run (None if it can)."""
    if steps < min_steps:
        return f"{steps} steps < min_steps {min_steps}"
    if steps < max(1, cfg.optim.warmup_steps):
        return f"{steps} steps < warmup_steps {cfg.optim.warmup_steps}"
    return None


def _length(steps: int) -> dict:
    return {"train.steps": steps, "train.tokens": None}


def _isoflop(d: dict, build: Build, where: str, log: Log) -> list[Point]:
    """Every (budget, shape) with D = C / exact flops_per_token; too-short points dropped, with a message."""
    base = build({})
    points, dropped = [], 0
    for budget in d["budgets"]:
        for rung in rungs(d, base, where):
            cfg = _built(build, rung.overrides, where, rung.varied)
            fpt = shapes.count(cfg).flops_per_token
            steps = _steps(budget / fpt, cfg)
            why = _too_short(steps, cfg, d.get("min_steps", 1))
            varied = {"budget": budget, **rung.varied, "train.steps": steps}
            if why:
                dropped += 1
                log(f"{where}: dropped budget={budget:.3g} {_show(rung.varied)}: {why} (D = C / {fpt:,} FLOPs "
                    f"per token = {budget / fpt:,.0f} tokens at {cfg.tokens_per_step:,} per step); raise the budget, "
                    "lower min_steps or drop the shape")
                continue
            points.append(Point({**rung.overrides, **_length(steps)}, varied))
    return _nonempty(points, dropped, where)


def _ladder(d: dict, build: Build, where: str, log: Log) -> list[Point]:
    """Every rung x token setting: a fixed D, or D = tokens_per_param x N."""
    base = build({})
    points, dropped = [], 0
    ratios = [("tokens_per_param", r) for r in d.get("tokens_per_param", [])] or [("tokens", t) for t in d["tokens"]]
    for rung in rungs(d, base, where):
        cfg = _built(build, rung.overrides, where, rung.varied)
        acc = shapes.count(cfg)
        n = acc.params_total if d.get("n_params", "total") == "total" else acc.params_nonembedding
        for key, value in ratios:
            tokens = value * n if key == "tokens_per_param" else value
            steps = _steps(tokens, cfg)
            varied = {**rung.varied, **({key: value} if len(ratios) > 1 or key != "tokens" else {}),
                      "train.steps": steps}
            why = _too_short(steps, cfg, d.get("min_steps", 1))
            if why:
                dropped += 1
                log(f"{where}: dropped {_show(varied)}: {why} ({tokens:,.0f} tokens); raise tokens or lower "
                    "min_steps")
                continue
            points.append(Point({**rung.overrides, **_length(steps)}, varied))
    return _nonempty(points, dropped, where)


def _transfer(d: dict, build: Build, where: str, log: Log) -> list[Point]:
    """LR x width (x parametrization) with n_heads = width / head_dim: the runs the equivalent grid gives."""
    head_dim = d.get("head_dim", build({}).model.resolved_head_dim)
    for w in d["widths"]:
        if w % head_dim:
            raise ConfigError(f"{where}: widths: {w} is not a multiple of head_dim {head_dim}; head size is fixed "
                              "so n_heads = width / head_dim")
    names = d.get("parametrizations")
    points = []
    for lr in d["lr"]:
        for name in names or [None]:
            for w in d["widths"]:
                v = {"optim.lr": lr, **({"param.name": name} if names else {}), "model.d_model": w,
                     "model.n_heads": w // head_dim}
                points.append(Point(dict(v), v))
    return points


def _wsd_branch(d: dict, build: Build, where: str, log: Log) -> list[Point]:
    """Per shape: a constant-LR parent to the last branch step, then one cooldown child per token budget."""
    base = build({})
    frac, points, dropped = d.get("cooldown_frac", 0.2), [], 0
    child_keys = {"optim.schedule": "wsd", "optim.cooldown_frac": frac,
                  **{f"optim.{k}": d[k] for k in ("cooldown_shape", "final_lr_frac") if k in d}}
    for rung in rungs(d, base, where):
        cfg = _built(build, rung.overrides, where, rung.varied)
        children = []
        for tokens, budget in _branch_tokens(d, cfg):
            steps = _steps(tokens, cfg)
            s = steps - int(round(frac * steps))  # schedules.wsd's cooldown start, computed the same way
            why = _too_short(steps, cfg, d.get("min_steps", 1))
            if why is None and not max(1, cfg.optim.warmup_steps) <= s < steps:
                why = f"branch step {s} of {steps} leaves no stable phase or no cooldown"
            if why:
                dropped += 1
                log(f"{where}: dropped {_show(rung.varied)} tokens={tokens:,.0f}: {why}; raise tokens or lower "
                    "min_steps")
                continue
            children.append((steps, s, budget))
        if not children:
            continue
        branch_steps = sorted({s for _, s, _ in children})
        parent = len(points)
        points.append(Point({**rung.overrides, "optim.schedule": "constant", **_length(branch_steps[-1]),
                             "train.checkpoint_steps": branch_steps},
                            {**rung.varied, "role": "parent", "train.steps": branch_steps[-1]}))
        for steps, s, budget in children:
            points.append(Point({**rung.overrides, **child_keys, **_length(steps), "train.branch_step": s},
                                {**({"budget": budget} if budget else {}), **rung.varied, "role": "cooldown",
                                 "train.steps": steps, "train.branch_step": s}, parent=parent))
    return _nonempty(points, dropped, where)


def _branch_tokens(d: dict, cfg: config.Config) -> list[tuple[float, float | None]]:
    """(tokens, budget or None) per child of one shape: `tokens` as given, or each budget / its flops_per_token."""
    if "tokens" in d:  # exactly one of the two (checked with the other keys)
        return [(t, None) for t in d["tokens"]]
    fpt = shapes.count(cfg).flops_per_token
    return [(b / fpt, b) for b in d["budgets"]]


def _show(varied: dict) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in varied.items())


def _nonempty(points: list[Point], dropped: int, where: str) -> list[Point]:
    if not points:
        raise ConfigError(f"{where}: all {dropped} points were too short (see the messages above); raise the "
                          "budgets/tokens, lower design.min_steps or the warmup")
    return points
