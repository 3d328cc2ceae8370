"""Hyperparameter transfer across width or depth (docs/transfer.md): where is the optimum, does it move?

Reads a sweep directory of run directories, or the CSV table exported from one (analysis/runtable.py), and nothing
else: no JAX, no model code. Runs are grouped into panels (e.g. SP vs muP) by the config keys that vary apart from the
swept hp, the scaled axis and the seed. Per panel and axis value: loss vs log2(hp) averaged over seeds, a parabola
through the points within 1.2x of the minimum, its vertex log2 eta* with a bootstrap-over-seeds CI
(analysis/optimum.py). Across axis values: drift, slope, the loss penalty of transferring the smallest model's
optimum, and whether wider is better. Where the runs logged sigma_max, also Fan et al.'s normalized sigma_max of the
hidden matrices at each optimum (interpolated in log2 hp), whose spread across widths says if it is width-invariant.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from testbed.analysis.optimum import MAX_RATIO, Cell, bootstrap_ci, fit_optimum, loss_at, why_missing
from testbed.analysis.runtable import RunTable, load, load_runs  # noqa: F401  (load, load_runs: the readers)

from testbed.config import ConfigError
from testbed.runstore import jsonable, number

HP_LABELS = {"optim.lr": "learning rate", "optim.weight_decay": "weight decay"}


@dataclass(frozen=True)
class Thresholds:
    """The protocol's criteria for good transfer (echoed in every result)."""

    drift: float = 0.5  # max - min of log2 eta* over the axis values
    slope: float = 0.1  # |d log2 eta* / d log2 axis|
    penalty: float = 0.005  # loss at the transferred optimum relative to the per-width optimum (0.5%)


# --- panels -------------------------------------------------------------------------------------------------------
def _is_function_of(rows: list[dict], key: str, by: list[str]) -> bool:
    """Whether `key` takes a single value within every group of rows sharing the values of `by`."""
    seen: dict[tuple, Any] = {}
    for r in rows:
        g = tuple(r.get(b) for b in by)
        if seen.setdefault(g, r.get(key)) != r.get(key):
            return False
    return True


def find_panel_keys(table: RunTable, hp: str, axis: str) -> tuple[list[str], list[str]]:
    """(panel keys, keys tied to the axis): varying keys split panels unless they follow the axis value.

    A key that is a function of the axis value alone (n_heads, d_ff with d_model) is tied. So is one that is a
    function of (axis, the other panel keys) but not of those keys alone (e.g. muP's WD scaled with width while
    SP keeps it fixed): it moves with the axis inside a panel. Among such keys, the most-valued goes first.
    """
    rows = table.rows
    varying = [k for k in table.config_keys if k not in (hp, axis, "seed") and len({r.get(k) for r in rows}) > 1]
    tied = [k for k in varying if _is_function_of(rows, k, [axis])]
    keys = [k for k in varying if k not in tied]
    while True:
        movable = [k for k in keys if _is_function_of(rows, k, [axis] + [o for o in keys if o != k])
                   and not _is_function_of(rows, k, [o for o in keys if o != k])]
        if not movable:
            return keys, sorted(tied)
        k = max(movable, key=lambda k: (len({r.get(k) for r in rows}), k))
        keys.remove(k)
        tied.append(k)


def _check_key(table: RunTable, key: str, what: str) -> None:
    missing = [r["run_dir"] for r in table.rows if key not in r]
    varying = [k for k in table.config_keys if len({r.get(k) for r in table.rows}) > 1]
    if len(missing) == len(table.rows):
        raise ConfigError(f"--{what} {key}: no run's config has this key; keys that vary across the sweep: "
                          f"{', '.join(varying) or 'none'}")
    if missing:
        raise ConfigError(f"--{what} {key}: missing from {len(missing)} runs (e.g. {missing[0]}); "
                          "remove runs that are not testbed runs from the sweep directory")
    bad = [r[key] for r in table.rows if isinstance(r[key], bool) or math.isnan(number(r[key]))]
    if bad:
        raise ConfigError(f"--{what} {key}: needs numeric values, got {bad[0]!r}; pick a numeric key")
    if what == "hp" and len({r[key] for r in table.rows}) < 2:
        raise ConfigError(f"--hp {key}: takes a single value across the sweep, nothing to locate an optimum in; "
                          f"keys that vary: {', '.join(varying) or 'none'}")


def log2_hp(table: RunTable, hp: str, axis: str, exponent: float):
    """Row -> log2(hp / (axis / smallest axis)^exponent): the coordinate of a rule hp ~ axis^exponent (0: hp itself)."""
    w0 = min(number(r[axis]) for r in table.rows)
    return lambda r: math.log2(number(r[hp])) - exponent * math.log2(number(r[axis]) / w0)


def points(table: RunTable, hp: str, axis: str, keys: list[str], exponent: float = 0.0):
    """(panel values, axis value, log2 hp coordinate, row, finished) for every run with hp > 0; finished means
    completed with a finite metric. The one grouping of rows that the optima, sigma_max and the profiles share."""
    x_of = log2_hp(table, hp, axis, exponent)
    for r in table.rows:
        if number(r[hp]) <= 0:
            continue
        w = number(r[axis])
        yield tuple(r.get(k) for k in keys), int(w) if w.is_integer() else w, x_of(r), r, finished(table, r)


def finished(table: RunTable, r: dict) -> bool:
    return r["status"] == "completed" and math.isfinite(number(r[table.metric]))


def _cells(table: RunTable, hp: str, axis: str, keys: list[str], exponent: float = 0.0) -> tuple[dict, dict[str, int]]:
    """{panel values: {axis value: Cell}} over runs with hp > 0, and counts of the runs left out."""
    done = [finished(table, r) for r in table.rows]
    dropped = {"diverged_or_nan": done.count(False),
               "nonpositive_hp": sum(ok and number(r[hp]) <= 0 for r, ok in zip(table.rows, done, strict=True))}
    runs: dict = defaultdict(lambda: defaultdict(list))
    for panel, w, x, r, ok in points(table, hp, axis, keys, exponent):
        runs[panel][w].append((x, r.get("seed"), number(r[table.metric]) if ok else math.nan))
    cells: dict = {}
    for panel, by_axis in runs.items():
        cells[panel] = {}
        for w, items in sorted(by_axis.items()):
            xs = sorted({x for x, _, _ in items})
            seeds = sorted({s for _, s, v in items if math.isfinite(v)}, key=str)  # seeds with a finite run
            total, count = np.zeros((len(seeds), len(xs))), np.zeros((len(seeds), len(xs)), dtype=int)
            for x, s, v in items:
                if s in seeds:
                    total[seeds.index(s), xs.index(x)] += v
                    count[seeds.index(s), xs.index(x)] += 1
            loss = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            cells[panel][w] = Cell(np.array(xs), seeds, loss, count)
    return cells, dropped


# --- the analysis -------------------------------------------------------------------------------------------------
def _name(k: str, v: Any, short: bool = True) -> str:
    """`d_model=64` for an axis value (short), `param.name=mup` for a panel key."""
    k = k.split(".")[-1] if short else k
    return f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"


def _panel(cells: dict[float, Cell], axis: str, n_boot: int, rng: np.random.Generator, th: Thresholds) -> dict:
    """Per-width optima with CIs, then drift, slope, transfer penalty and wider-is-better for one panel."""
    widths = sorted(cells)
    fits = {w: fit_optimum(cells[w].x, cells[w].means()) for w in widths}
    warnings = []
    for w in widths:
        if fits[w].reason:
            warnings.append(f"{_name(axis, w)}: {fits[w].reason}")
    cis = []
    for w in widths:
        ci = bootstrap_ci(cells[w], n_boot, rng)
        if len(cells[w].seeds) == 1 and n_boot > 0:
            ci = (fits[w].log2_opt, fits[w].log2_opt)
            warnings.append(f"{_name(axis, w)}: one seed, so the CI is the point estimate (run more seeds)")
        cis.append(ci)
    ok = [w for w in widths if math.isfinite(fits[w].log2_opt)]
    opt = np.array([fits[w].log2_opt for w in ok])
    drift = float(opt.max() - opt.min()) if len(ok) else None
    slope = float(np.polyfit(np.log2(ok), opt, 1)[0]) if len(ok) >= 2 else None
    if len(widths) < 4 or widths[-1] < 8 * widths[0]:
        warnings.append(f"{len(widths)} axis values spanning {widths[-1] / widths[0]:g}x; the protocol asks for "
                        ">= 4 spanning >= 8x")
    penalty: list[float | None] = [None] * len(widths)
    if ok:
        base = ok[0]
        for j, w in enumerate(widths):
            if w == base:
                penalty[j] = 0.0
                continue
            at = loss_at(cells[w], fits[w], fits[base].log2_opt)
            if at is None or not math.isfinite(fits[w].loss_opt):
                warnings.append(f"{_name(axis, w)}: no loss at the base optimum (log2 = {fits[base].log2_opt:.3g}):"
                                f" {why_missing(cells[w], fits[base].log2_opt)}")
            else:
                penalty[j] = at / fits[w].loss_opt - 1.0
    known = [p for p in penalty if p is not None]
    max_penalty = max(known) if known else None
    loss_opt = [fits[w].loss_opt for w in ok]
    wider = bool(np.all(np.diff(loss_opt) < 0)) if len(ok) >= 2 else None
    means = {w: dict(zip(cells[w].x.tolist(), cells[w].means().tolist(), strict=True)) for w in widths}
    common = [x for x in cells[widths[0]].x.tolist() if all(np.isfinite(means[w].get(x, np.nan)) for w in widths)]
    monotone = (float(np.mean([all(np.diff([means[w][x] for w in widths]) <= 0) for x in common]))
                if common and len(widths) >= 2 else None)
    transfers = (drift is not None and slope is not None and max_penalty is not None
                 and None not in penalty and drift <= th.drift and abs(slope) <= th.slope
                 and max_penalty <= th.penalty)
    return {"widths": widths, "log2_opt": [_found(fits[w].log2_opt) for w in widths], "log2_opt_ci": cis,
            "loss_opt": [_found(fits[w].loss_opt) for w in widths], "edge": [fits[w].edge for w in widths],
            "n_seeds": [len(cells[w].seeds) for w in widths], "drift": drift, "slope": slope,
            "base_width": ok[0] if ok else None, "penalty": penalty, "max_penalty": max_penalty,
            "wider_is_better": wider, "monotone_fraction": monotone,
            "transfers": bool(transfers) if len(widths) >= 2 else None,  # one axis value: nothing to judge
            "warnings": warnings}


def _sigma_points(table: RunTable, hp: str, axis: str, keys: list[str], exponent: float) -> dict:
    """{panel values: {axis value: {log2 hp: [log sigma_norm_hidden per finished run]}}}."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for panel, w, x, r, ok in points(table, hp, axis, keys, exponent):
        if ok and r.get("sigma_norm_hidden"):
            out[panel][w][x].append(math.log(r["sigma_norm_hidden"]))
    return out


def _sigma_at_optimum(by_width: dict, fit: dict) -> dict:
    """{sigma_norm_at_opt: per axis value, sigma_norm_spread: max/min} where the runs carry sigma_norm_hidden.

    The seed-mean of log sigma_norm_hidden per grid point, interpolated linearly in log2 hp at the fitted optimum
    (None outside the grid).
    """
    at = []
    for w, opt in zip(fit["widths"], fit["log2_opt"], strict=True):
        xs = sorted(by_width.get(w, {}))
        if opt is None or len(xs) < 2 or not xs[0] <= opt <= xs[-1]:
            at.append(None)
            continue
        at.append(math.exp(float(np.interp(opt, xs, [np.mean(by_width[w][x]) for x in xs]))))
    if all(v is None for v in at):
        return {}
    known = [v for v in at if v is not None]
    return {"sigma_norm_at_opt": at, "sigma_norm_spread": max(known) / min(known) if len(known) >= 2 else None}


def _found(v: float) -> float | None:
    """An optimum, None where an axis value has none (no finite completed run): the result's missing number."""
    return v if math.isfinite(v) else None


def analyze_transfer(table: RunTable, hp: str = "optim.lr", axis: str = "model.d_model", bootstrap: int = 1000,
                     seed: int = 0, thresholds: Thresholds = Thresholds(), hp_exponent: float = 0.0) -> dict:
    """The section-5 transfer protocol over a RunTable; a JSON-serialisable dict (null for missing numbers).

    hp_exponent e judges the rule hp ~ (axis / smallest axis)^e: optima are located in log2 hp - e log2(axis/axis0),
    so drift 0 means the rule transfers (e = 1 for lambda ~ width, 0.5 for lambda ~ sqrt(width)).
    """
    if hp == axis:
        raise ConfigError(f"--hp and --axis are both {hp}; pass --hp the swept hyperparameter (e.g. optim.lr) "
                          "and --axis the scaled dimension (e.g. model.d_model)")
    _check_key(table, hp, "hp")
    _check_key(table, axis, "axis")
    if any(number(r[axis]) <= 0 for r in table.rows):
        raise ConfigError(f"--axis {axis}: needs positive values (its log2 is the abscissa of the slope)")
    keys, tied = find_panel_keys(table, hp, axis)
    cells, dropped = _cells(table, hp, axis, keys, hp_exponent)
    sigma = _sigma_points(table, hp, axis, keys, hp_exponent)
    rng = np.random.default_rng(seed)
    panels, n_above = [], 0
    for values in sorted(cells, key=str):
        by_width = cells[values]
        for c in by_width.values():
            m = c.means()
            above = np.isfinite(m) & (m > MAX_RATIO * np.where(np.isfinite(m), m, np.inf).min())
            n_above += int(c.n_valid[:, above].sum())
        panel = {"panel": dict(zip(keys, values, strict=True)), **_panel(by_width, axis, bootstrap, rng, thresholds)}
        panel.update(_sigma_at_optimum(sigma.get(values, {}), panel))
        panels.append(panel)
    n_dropped = {"diverged_or_nan": dropped["diverged_or_nan"], "above_1.2x_min": n_above,
                 "unfinished": len(table.unfinished), "nonpositive_hp": dropped["nonpositive_hp"]}
    n_runs = len(table.rows) + len(table.unfinished)
    return jsonable({"hp": hp, "axis": axis, "hp_exponent": hp_exponent, "metric": table.metric,
                     "panel_keys": keys, "tied_keys": tied,
                     "n_runs": n_runs, "n_used": n_runs - sum(n_dropped.values()), "n_dropped": n_dropped,
                     "thresholds": asdict(thresholds), "bootstrap": bootstrap, "panels": panels})


# --- reporting ----------------------------------------------------------------------------------------------------
def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _better(axis: str) -> str:
    """'wider is better' across width; 'larger steps is better' and the like across other axes."""
    return "wider is better" if axis == "model.d_model" else f"larger {axis.split('.')[-1]} is better"


def _rule_text(result: dict) -> str:
    """' / (d_model/32)^0.5' when optima are located under a scaling rule of the hp."""
    e = result.get("hp_exponent") or 0.0
    return f" / ({result['axis'].split('.')[-1]}/axis0)^{e:g}" if e else ""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _verdict(panel: dict) -> str:
    if panel["transfers"] is None:
        return "none (one axis value: nothing to transfer across)"
    return "transfers" if panel["transfers"] else "does not transfer"


def format_report(result: dict) -> str:
    """A readable table per panel (axis value, log2 eta* with CI, loss, penalty) and the panel's verdict."""
    r, th, axis = result, result["thresholds"], result["axis"]
    d = r["n_dropped"]
    out = [f"transfer of {r['hp']}{_rule_text(r)} across {axis} ({r['metric']}): {r['n_runs']} runs, "
           f"{r['n_used']} used; "
           f"dropped {d['diverged_or_nan']} diverged/NaN, {d['above_1.2x_min']} above {MAX_RATIO}x the minimum, "
           f"{d['unfinished']} unfinished" + (f", {d['nonpositive_hp']} with hp <= 0" if d["nonpositive_hp"] else ""),
           f"panels by: {', '.join(r['panel_keys']) or '(one panel)'}"
           + (f"; tied to the axis: {', '.join(r['tied_keys'])}" if r["tied_keys"] else "")]
    for p in r["panels"]:
        out += ["", ", ".join(_name(k, v, short=False) for k, v in p["panel"].items()) or "all runs",
                f"  {axis.split('.')[-1]:>10s}  {'log2 opt':>9s}  {'95% CI':>17s}  {'loss':>9s}  {'penalty':>8s}"]
        for j, w in enumerate(p["widths"]):
            ci = p["log2_opt_ci"][j]
            ci_s = "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
            pen = "base" if w == p["base_width"] else _pct(p["penalty"][j])
            out.append(f"  {w:>10g}  {_f(p['log2_opt'][j], '9.2f')}{'*' if p['edge'][j] else ' '} {ci_s:>17s}  "
                       f"{_f(p['loss_opt'][j], '9.4f')}  {pen:>8s}")
        mono = "-" if p["monotone_fraction"] is None else f"{100 * p['monotone_fraction']:.0f}%"
        out.append(f"  drift {_f(p['drift'], '.2f')} (<= {th['drift']:g}), slope {_f(p['slope'], '+.2f')} "
                   f"(|.| <= {th['slope']:g}), max penalty {_pct(p['max_penalty'])}"
                   f" (<= {100 * th['penalty']:g}%), {_better(axis)}: {p['wider_is_better']} "
                   f"(monotone on {mono} of the common grid)")
        if p.get("sigma_norm_at_opt"):
            out.append("  normalized sigma_max of hidden matrices at the optimum: "
                       + ", ".join(_f(v, ".3g") for v in p["sigma_norm_at_opt"])
                       + f" (max/min {_f(p['sigma_norm_spread'], '.2f')})")
        verdict = _verdict(p)
        out.append(f"  verdict: {verdict.upper() if p['transfers'] else verdict}")
        out += [f"  warning: {w}" for w in p["warnings"]]
    if any(any(p["edge"]) for p in r["panels"]):
        out.append("\n* the observed minimum, not a fitted vertex (see the warning)")
    return "\n".join(out)


def plot_transfer(result: dict, table: RunTable, out_path: str | Path) -> Path:
    """Loss vs log2 hp, one line per axis value and a star at each fitted optimum; one panel per subplot."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    hp, axis, keys = result["hp"], result["axis"], result["panel_keys"]
    cells, _ = _cells(table, hp, axis, keys, result.get("hp_exponent", 0.0))
    panels = result["panels"]
    all_widths = sorted({w for p in panels for w in p["widths"]}) or [1]
    norm = Normalize(math.log2(all_widths[0]), math.log2(all_widths[-1]) + 1e-9)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(4.6 * max(len(panels), 1), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(panels), 1), sharey=True, squeeze=False)[0]
    lows = []
    for ax, p in zip(axes, panels, strict=False):
        by_width = cells.get(tuple(_hashable(p["panel"][k]) for k in keys), {})
        for j, w in enumerate(p["widths"]):
            cell = by_width.get(w)
            if cell is None:
                continue
            color = cmap(0.85 * norm(math.log2(w)))
            m = cell.means()
            f = np.isfinite(m)
            lows += m[f].tolist()
            ax.plot(cell.x[f], m[f], "o-", color=color, ms=3, lw=1.3, label=f"{w:g}")
            if p["log2_opt"][j] is not None:
                ax.plot(p["log2_opt"][j], p["loss_opt"][j], "*", color=color, ms=13, mec="black", mew=0.6)
        short = len(p["panel"]) > 1  # several panel keys: their last parts keep the title within the subplot
        title = ", ".join(_name(k, v, short=short) for k, v in p["panel"].items()) or "all runs"
        sub = (f"log2 optimum {_f(p['log2_opt'][0], '.2f')}, loss {_f(p['loss_opt'][0], '.4f')}"
               if p["transfers"] is None  # an LR probe at one shape: its optimum, no transfer to judge
               else f"{_verdict(p)} (drift {_f(p['drift'], '.2f')}, slope {_f(p['slope'], '+.2f')})")
        ax.set_title(f"{title}\n{sub}", fontsize=10)
        ax.set_xlabel(f"log2 {HP_LABELS.get(hp, hp)}" + _rule_text(result))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=axis.split(".")[-1], title_fontsize=8)
    axes[0].set_ylabel(result["metric"])
    if lows:
        lo, hi = min(lows), max(lows)
        hi = min(hi, 1.5 * lo) if lo > 0 else hi
        pad = 0.03 * (hi - lo) if hi > lo else 1e-3
        axes[0].set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    from testbed.analysis import plots

    return plots.save(fig, out_path)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
