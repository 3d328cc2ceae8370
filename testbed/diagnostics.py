"""The muP coordinate check, across width and across depth.

coord_check trains each shape a few steps on one fixed batch with a large LR and records mean |activation| of
every module output at each step. Under a parametrization that transfers, those numbers do not move with width
(or depth); under SP they grow. (Top singular values, the weight-decay diagnostic, are in testbed.spectral.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from testbed import shapes
from testbed.config import Config, ConfigError
from testbed.data import make_source
from testbed.model import Transformer, init_params, param_info
from testbed.optim import make_optimizer
from testbed.parametrization import MUP_FAMILY
from testbed.train import init_state, make_train_step

MODULES = ("embedding", "attn_logits", "attn_out", "mlp_out", "residual", "logits")
TOLERANCE = 1.2  # the muP library's: 1/1.2 < l1(4w) / l1(w) < 1.2


def reshape(cfg: Config, *, width: int | None = None, depth: int | None = None) -> Config:
    """cfg at another width (head size and d_ff ratio kept, so heads and d_ff grow) or depth."""
    m = cfg.model
    rung = shapes.ladder(width or m.d_model, depth=depth or m.n_layers, head_dim=m.resolved_head_dim,
                         ffn_ratio=m.resolved_d_ff // m.d_model)
    return dataclasses.replace(cfg, model=dataclasses.replace(m, **rung))


def _probe_config(cfg: Config, lr: float | None, seq_len: int) -> Config:
    """Constant LR, no clipping, no warmup: the coordinate check's protocol."""
    o = dataclasses.replace(cfg.optim, schedule="constant", warmup_steps=0, grad_clip=None,
                            lr=lr if lr is not None else cfg.optim.lr)
    return dataclasses.replace(cfg, optim=o, data=dataclasses.replace(cfg.data, seq_len=seq_len))


def _module_l1(intermediates) -> dict[str, jax.Array]:
    """Mean |x| per module kind, averaged over blocks; 'residual' is the last block's output."""
    flat = {tuple(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(intermediates)}
    out = {}
    for module in MODULES:
        hits = sorted((path, v) for path, v in flat.items() if module in path)
        if not hits:
            continue
        out[module] = hits[-1][1] if module == "residual" else jnp.mean(jnp.stack([v for _, v in hits]))
    return out


def _trace(cfg: Config, tokens_BxLp1: np.ndarray, steps: int, seeds: int) -> dict[str, np.ndarray]:
    """l1[module] of shape [seeds, steps]: activations at steps 1..S (step 1 = init) on one fixed batch."""
    params = init_params(cfg, jax.random.key(0))
    tx = make_optimizer(cfg, param_info(params))  # the probe's constant schedule: its length does not matter
    train_step = make_train_step(cfg, tx)
    inputs_BxL = tokens_BxLp1[:, :-1]

    @jax.jit
    def probe_and_step(state):
        _, inter = Transformer(cfg).apply({"params": state["params"]}, inputs_BxL, mutable=["intermediates"])
        new_state, _ = train_step(state, tokens_BxLp1[None])
        return new_state, _module_l1(inter["intermediates"])

    trace: dict[str, list] = {}
    for seed in range(seeds):
        state = init_state(cfg, tx, init_params(cfg, jax.random.key(seed)))
        for _ in range(steps):
            state, l1 = probe_and_step(state)
            for k, v in l1.items():
                trace.setdefault(k, [[] for _ in range(seeds)])[seed].append(float(v))
    return {k: np.asarray(v) for k, v in trace.items()}


def coord_check(cfg: Config, widths: list[int] | None = None, depths: list[int] | None = None, steps: int = 5,
                seeds: int = 3, lr: float | None = None, batch_size: int = 1, seq_len: int = 16,
                progress: Callable[[str], None] | None = None) -> dict:
    """Width check (depths None) or depth check; JSON-ready result with slopes, worst 4x ratio and `passed`.

    Width: every module at every step >= 2 must satisfy 1/1.2 < l1(4w)/l1(w) < 1.2 for each width pair 4x
    apart. Depth: the final residual stream across depths 4x apart, same tolerance.

    The fixed batch is small (default 1 x 16 tokens) on purpose: muP's limit needs width >> tokens in the
    batch. An Adam update is a sum over tokens, and its alignment with one token's activation (the part
    that grows like width) competes with the other tokens' (growing like sqrt(width * tokens)). Measured
    here with 16 x 64 tokens at widths 64-512, muP's logits fell like width^-0.37 from that alone; with
    16 tokens every muP slope stayed within +-0.05.
    """
    if (widths is None) == (depths is None):
        raise ConfigError("coordcheck: give --widths, or --depths (a depth check at the config's width)")
    axis, sizes = ("width", widths) if widths is not None else ("depth", depths)
    if len(sizes) < 2 or sorted(set(sizes)) != list(sizes):
        raise ConfigError(f"coordcheck: --{axis}s needs two or more increasing values, got {sizes}")
    pairs = [(i, j) for i, a in enumerate(sizes) for j, b in enumerate(sizes) if b == 4 * a]
    if not pairs:
        raise ConfigError(f"coordcheck: --{axis}s {sizes} has no pair 4x apart (e.g. 64,128,256,512)")
    cfg = _probe_config(cfg, lr, seq_len)
    tokens_BxLp1 = make_source(cfg.data, cfg.model.vocab_size, cfg.seed).train_batch(0, batch_size)
    l1: dict[str, list] = {}
    for size in sizes:
        shaped = reshape(cfg, **{axis: size})
        if progress:
            progress(f"coordcheck: {cfg.param.name} {axis} {size}")
        for k, v in _trace(shaped, tokens_BxLp1, steps, seeds).items():
            l1.setdefault(k, []).append(v.mean(axis=0))  # mean over seeds -> [steps]
    l1_arr = {k: np.stack(v) for k, v in l1.items()}  # [sizes, steps]
    checked = list(l1_arr) if axis == "width" else ["residual"]
    log_sizes = np.log2(np.asarray(sizes, float))
    modules, worst, passed = {}, None, True
    for k, arr in l1_arr.items():
        slopes = [float(np.polyfit(log_sizes, np.log2(np.maximum(arr[:, s], 1e-30)), 1)[0])
                  for s in range(steps)]
        ratios = [[float(arr[j, s] / arr[i, s]) if arr[i, s] > 0 else math.inf for (i, j) in pairs]
                  for s in range(steps)]
        after = [r for s in range(1, steps) for r in ratios[s]]  # steps >= 2
        bad = max(after, key=lambda r: abs(math.log(r)) if 0 < r < math.inf else math.inf, default=1.0)
        ok = all(1 / TOLERANCE < r < TOLERANCE for r in after)
        modules[k] = {"l1": arr.tolist(), "slope": slopes, "ratio_4x": ratios, "worst_ratio_4x": bad,
                      "checked": k in checked, "passed": ok}
        if k in checked:
            passed = passed and ok
            if worst is None or abs(math.log(max(bad, 1e-30))) > abs(math.log(max(worst["ratio"], 1e-30))):
                worst = {"module": k, "ratio": bad}
    result = {"param": cfg.param.name, "axis": axis, "sizes": list(sizes), "steps": steps, "seeds": seeds,
              "lr": cfg.optim.lr, "batch_tokens": batch_size * seq_len, "tolerance": TOLERANCE, "modules": modules,
              "worst_ratio_4x": worst, "passed": passed}
    if not passed:
        result["likely_cause"] = likely_cause(cfg, result)
    return result


def likely_cause(cfg: Config, result: dict) -> str:
    """The setting most likely behind a failed check, from the worst module and the config (one sentence)."""
    w = result["worst_ratio_4x"]
    module, direction = w["module"], "shrinks" if w["ratio"] < 1 else "grows"
    m, p = cfg.model, cfg.param
    head = f"{module} {direction} with {result['axis']} (worst 4x ratio {w['ratio']:.3f}): "
    if result["axis"] == "depth":
        return head + (f"param.name={p.name} does not scale the residual branches with depth; use depth_mup or "
                       "completep (with model.emb_std=1.0)" if p.name in ("sp", "mup", "sp_perlayer") else
                       "the residual stream's scale comes from the embedding; try model.emb_std=1.0")
    if p.name not in MUP_FAMILY:
        return head + f"param.name={p.name} keeps hidden LRs and init fixed in width; use param.name=mup"
    if module == "logits" and not m.zero_init_readout:
        return head + ("model.zero_init_readout=false: a random readout under muP's 1/m multiplier gives logits "
                       "that shrink like 1/sqrt(m); set model.zero_init_readout=true")
    if module == "logits":
        return head + "the readout: check param.alpha_out and optim.lr_mult.readout"
    if module == "attn_logits":
        K, smallest = m.resolved_head_dim, result["sizes"][0]
        return head + (f"heads of size {K} leave {max(smallest // K, 1)} head(s) at d_model {smallest}, a "
                       f"finite-width effect; use a smaller head size (e.g. model.head_dim=16) or start at a wider "
                       f"width" if smallest // K <= 2 else "check param.alpha_attn and param.base_head_dim")
    if module == "embedding":
        return head + "the embedding: check model.emb_std, param.alpha_in and optim.lr_mult.embedding"
    return head + ("the hidden matrices: check optim.lr_mult.hidden and model.init_std, or lower --lr (a large LR "
                   "leaves the small-update regime the check assumes)")


def format_coord_check(result: dict) -> str:
    """`testbed coordcheck` as text: per module its per-step slope and worst 4x ratio, then the verdict."""
    lines = []
    for name, mod in result["modules"].items():
        mark = "" if mod["checked"] else " (not checked)"
        lines.append(f"{name:12s} slope/step {' '.join(f'{s:+.2f}' for s in mod['slope'])}  "
                     f"worst 4x ratio {mod['worst_ratio_4x']:.3f}{mark}")
    w = result["worst_ratio_4x"]
    lines.append(f"{'PASSED' if result['passed'] else 'FAILED'}: worst 4x ratio {w['ratio']:.3f} ({w['module']})")
    if result.get("likely_cause"):
        lines.append(f"likely cause: {result['likely_cause']}")
    return "\n".join(lines)
