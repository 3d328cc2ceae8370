"""Hyperparameter transfer across width or depth (REFERENCE.md section 5): where is the optimum, does it move?

Reads a sweep directory of run directories (config.yaml + summary.json) and nothing else: no JAX, no model code.
Runs are grouped into panels (e.g. SP vs muP) by the config keys that vary apart from the swept hp, the scaled
axis and the seed. Per panel and axis value: loss vs log2(hp) averaged over seeds, a parabola through the points
within 1.2x of the minimum, its vertex log2 eta* with a bootstrap-over-seeds CI. Across axis values: drift, slope,
the loss penalty of transferring the smallest model's optimum, and whether wider is better.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from testbed.config import ConfigError

WINDOW = 2  # grid points on each side of the minimum that the parabola sees
MAX_RATIO = 1.2  # the protocol drops points above 1.2x the per-width minimum
ON_GRID = 1e-6  # a transferred log2 optimum this close to a grid value reads the observed point
HP_LABELS = {"optim.lr": "learning rate", "optim.weight_decay": "weight decay"}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads a 1000-run sweep ~10x faster


@dataclass(frozen=True)
class Thresholds:
    """REFERENCE.md section 5's criteria for good transfer (echoed in every result)."""

    drift: float = 0.5  # max - min of log2 eta* over the axis values
    slope: float = 0.1  # |d log2 eta* / d log2 axis|
    penalty: float = 0.005  # loss at the transferred optimum relative to the per-width optimum (0.5%)


@dataclass
class RunTable:
    """Finished runs as flat rows (dotted config keys, run_dir, status, metric) plus the unfinished run dirs."""

    sweep_dir: Path
    metric: str
    rows: list[dict[str, Any]]
    config_keys: list[str]
    unfinished: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One (panel, axis value): the log2 hp grid and a seeds x grid matrix of losses (NaN: diverged or missing)."""

    x: np.ndarray  # log2 hp values tried at this axis value, ascending
    seeds: list[Any]
    loss: np.ndarray  # (n_seeds, n_x), the seed's mean over its finite completed runs at that x
    n_valid: np.ndarray  # (n_seeds, n_x) finite completed runs behind each entry

    def means(self) -> np.ndarray:
        """Per-x mean over the seeds that have a finite value (NaN where none has)."""
        return _weighted_means(np.ones((1, len(self.seeds))), self.loss)[0]


@dataclass
class Fit:
    """The optimum of one loss-vs-log2(hp) curve: the parabola vertex, or the observed argmin when not trusted."""

    log2_opt: float
    loss_opt: float
    edge: bool  # True: the optimum is the observed argmin (grid edge, concave fit or too few points)
    coef: tuple[float, float, float] | None  # a, b, c of a x^2 + b x + c when a > 0 on >= 3 points
    fit_range: tuple[float, float] | None  # lowest and highest x the parabola was fitted to
    reason: str | None = None

    def predict(self, x: float) -> float:
        a, b, c = self.coef
        return a * x * x + b * x + c


# --- reading the sweep --------------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys; lists become tuples so every value can key a group."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _number(v: Any) -> float:
    """Summary numbers and YAML values as floats; "nan"/"inf" strings and missing values are NaN or inf."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load_runs(sweep_dir: str | Path, metric: str = "final_eval_loss") -> RunTable:
    """Reads every SWEEP_DIR/*/config.yaml (+ summary.json when finished) into a RunTable."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep directory {sweep_dir} does not exist; pass the directory whose subdirectories "
                          "are the sweep's run directories")
    run_dirs = sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())
    if not run_dirs:
        if (sweep_dir / "config.yaml").is_file():
            raise ConfigError(f"{sweep_dir} is a run directory, not a sweep directory: pass its parent")
        raise ConfigError(f"{sweep_dir} holds no run directories (subdirectories with a config.yaml); "
                          "pass the directory the sweep wrote its runs into")
    rows, unfinished, keys, has_metric = [], [], set(), False
    for run in run_dirs:
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            unfinished.append(run.name)
            continue
        try:
            cfg = yaml.load((run / "config.yaml").read_text(), Loader=_YAML_LOADER)
            summary = json.loads(summary_path.read_text())
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"{run}: cannot read config.yaml/summary.json ({e}); remove or fix the run") from None
        if not isinstance(cfg, dict) or not isinstance(summary, dict):
            raise ConfigError(f"{run}: config.yaml and summary.json must hold mappings; remove or fix the run")
        flat = _flatten(cfg)
        keys.update(flat)
        has_metric |= metric in summary
        rows.append({**flat, "run_dir": run.name, "status": summary.get("status"),
                     metric: _number(summary.get(metric))})
    if not rows:
        raise ConfigError(f"{sweep_dir}: none of its {len(unfinished)} run directories has finished "
                          "(no summary.json); wait for the sweep or check its logs")
    if not has_metric:
        raise ConfigError(f"metric {metric}: no summary.json has it; use final_eval_loss or final_train_loss")
    return RunTable(sweep_dir, metric, rows, sorted(keys), unfinished)


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
    bad = [r[key] for r in table.rows if isinstance(r[key], bool) or math.isnan(_number(r[key]))]
    if bad:
        raise ConfigError(f"--{what} {key}: needs numeric values, got {bad[0]!r}; pick a numeric key")
    if what == "hp" and len({r[key] for r in table.rows}) < 2:
        raise ConfigError(f"--hp {key}: takes a single value across the sweep, nothing to locate an optimum in; "
                          f"keys that vary: {', '.join(varying) or 'none'}")


def _cells(table: RunTable, hp: str, axis: str, keys: list[str]) -> tuple[dict, dict[str, int]]:
    """{panel values: {axis value: Cell}} over runs with hp > 0, and counts of the runs left out."""
    dropped = {"diverged_or_nan": 0, "nonpositive_hp": 0}
    runs: dict = defaultdict(lambda: defaultdict(list))
    for r in table.rows:
        v = _number(r[table.metric])
        ok = r["status"] == "completed" and math.isfinite(v)
        dropped["diverged_or_nan"] += not ok
        if _number(r[hp]) <= 0:
            dropped["nonpositive_hp"] += ok
            continue
        w = _number(r[axis])
        runs[tuple(r.get(k) for k in keys)][int(w) if w.is_integer() else w].append(
            (math.log2(_number(r[hp])), r.get("seed"), v if ok else math.nan))
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


# --- fitting ------------------------------------------------------------------------------------------------------
def _weighted_means(weights: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(B, S) seed multiplicities x (S, X) losses -> (B, X) means over the finite entries (NaN where none)."""
    finite = np.isfinite(loss)
    total = weights @ np.where(finite, loss, 0.0)
    count = weights @ finite.astype(float)
    return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def _fit_rows(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised over the rows of y (B, X): drop NaN and > 1.2x min points, least-squares parabola, fallback."""
    finite = np.isfinite(y)
    has = finite.any(1)
    ymin = np.where(finite, y, np.inf).min(1)
    # The lowest points only (REFERENCE.md section 5): within 1.2x of the minimum AND within WINDOW grid points of
    # it. Loss vs log2 LR is asymmetric (steep on the high side), so a parabola through the whole 1.2x band put
    # its vertex loss below every observed point in the transfer sweep of docs/transfer.md.
    near = np.abs(np.arange(len(x))[None, :] - np.where(finite, y, np.inf).argmin(1)[:, None]) <= WINDOW
    keep = finite & (y <= MAX_RATIO * ymin[:, None]) & near
    n = keep.sum(1)
    x0 = x.mean()
    xc = x - x0  # centred for a well-conditioned normal equation
    basis = np.stack([xc**2, xc, np.ones_like(xc)], 1)  # (X, 3)
    gram = np.einsum("bx,xi,xj->bij", keep.astype(float), basis, basis)
    rhs = np.einsum("bx,xi->bi", np.where(keep, y, 0.0), basis)
    cen = np.full((len(y), 3), np.nan)
    solvable = n >= 3
    if solvable.any():
        cen[solvable] = np.linalg.solve(gram[solvable], rhs[solvable][..., None])[..., 0]
    a, b, c = cen.T
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = x0 - b / (2 * a)
        vertex_loss = c - b * b / (4 * a)
    i = np.where(keep, y, np.inf).argmin(1)
    lo, hi = np.where(keep, x, np.inf).min(1), np.where(keep, x, -np.inf).max(1)
    at_edge = (x[i] == lo) | (x[i] == hi)
    convex = solvable & (a > 0)
    inside = convex & (vertex >= lo) & (vertex <= hi)
    good = inside & ~at_edge
    xopt = np.where(has, np.where(good, vertex, x[i]), np.nan)
    lopt = np.where(has, np.where(good, vertex_loss, y[np.arange(len(y)), i]), np.nan)
    coef = np.stack([a, b - 2 * a * x0, a * x0 * x0 - b * x0 + c], 1)  # back to uncentred x
    return dict(xopt=xopt, lopt=lopt, edge=has & ~good, has=has, keep=keep, n=n, lo=lo, hi=hi, i=i,
                at_edge=at_edge, convex=convex, inside=inside, vertex=vertex, coef=coef)


def fit_optimum(x: np.ndarray, loss: np.ndarray) -> Fit:
    """Locates log2 eta* on one curve (x = log2 hp ascending, loss = mean over seeds, NaN = no finite run)."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    f = {k: v[0] for k, v in _fit_rows(x, loss[None]).items()}
    coef = tuple(float(c) for c in f["coef"]) if f["convex"] else None
    fit_range = (float(f["lo"]), float(f["hi"])) if f["has"] else None
    if not f["has"]:
        return Fit(math.nan, math.nan, True, None, None, "no finite completed run")
    reason = None
    if f["edge"]:
        xm = x[f["i"]]
        if f["n"] < 3:
            reason = f"only {f['n']} points within {MAX_RATIO}x of the minimum (a parabola needs 3)"
        elif f["at_edge"] and xm in (x[0], x[-1]):
            side = "lowest" if xm == x[0] else "highest"
            reason = f"the minimum is at the {side} grid value (log2 = {xm:g}): extend the grid"
        elif f["at_edge"]:
            side = "lower" if xm == f["lo"] else "higher"
            reason = (f"the minimum (log2 = {xm:g}) has no kept neighbour on its {side} side "
                      f"(diverged or above {MAX_RATIO}x the minimum)")
        elif not f["convex"]:
            reason = "the parabola through the points is concave"
        else:
            reason = f"the parabola vertex (log2 = {f['vertex']:.3g}) lies outside the fitted points"
        reason += "; using the observed minimum"
    return Fit(float(f["xopt"]), float(f["lopt"]), bool(f["edge"]), coef, fit_range, reason)


def bootstrap_ci(cell: Cell, n_boot: int, rng: np.random.Generator) -> tuple[float, float] | None:
    """95% percentile CI of log2 eta*, resampling the seed set (same resample across the whole hp grid)."""
    s = len(cell.seeds)
    if n_boot <= 0 or s < 2:
        return None
    weights = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(float)
    xopt = _fit_rows(cell.x, _weighted_means(weights, cell.loss))["xopt"]
    xopt = xopt[np.isfinite(xopt)]
    return (float(np.percentile(xopt, 2.5)), float(np.percentile(xopt, 97.5))) if len(xopt) else None


def _loss_at(cell: Cell, fit: Fit, x: float) -> float | None:
    """Loss of this width at log2 hp = x: observed on the grid, else its parabola, else linear interpolation."""
    means = cell.means()
    on_grid = np.abs(cell.x - x) < ON_GRID
    if on_grid.any():
        v = means[on_grid][0]
        return float(v) if np.isfinite(v) else None
    if fit.coef is not None and fit.fit_range[0] <= x <= fit.fit_range[1]:
        return fit.predict(x)
    finite = np.isfinite(means)
    if finite.sum() >= 2 and cell.x[finite][0] <= x <= cell.x[finite][-1]:
        return float(np.interp(x, cell.x[finite], means[finite]))
    return None


def _why_missing(cell: Cell, x: float) -> str:
    """Why a width has no loss at x: its runs there diverged, or x is off its grid."""
    means = cell.means()
    finite = np.isfinite(means)
    if not finite.any():
        return "no finite run at this width"
    if any(abs(g - x) < ON_GRID or (g > x > cell.x[finite][-1]) or (g < x < cell.x[finite][0])
           for g in cell.x[~finite]):
        return "the runs there diverged (it does not transfer)"
    return "it lies off this width's grid"


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
            at = _loss_at(cells[w], fits[w], fits[base].log2_opt)
            if at is None or not math.isfinite(fits[w].loss_opt):
                warnings.append(f"{_name(axis, w)}: no loss at the base optimum (log2 = {fits[base].log2_opt:.3g}):"
                                f" {_why_missing(cells[w], fits[base].log2_opt)}")
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
    return {"widths": widths, "log2_opt": [fits[w].log2_opt for w in widths], "log2_opt_ci": cis,
            "loss_opt": [fits[w].loss_opt for w in widths], "edge": [fits[w].edge for w in widths],
            "n_seeds": [len(cells[w].seeds) for w in widths], "drift": drift, "slope": slope,
            "base_width": ok[0] if ok else None, "penalty": penalty, "max_penalty": max_penalty,
            "wider_is_better": wider, "monotone_fraction": monotone, "transfers": bool(transfers),
            "warnings": warnings}


def _jsonable(v: Any) -> Any:
    """Plain JSON: numpy scalars to Python, tuples to lists, NaN/inf to null, integral axis values to ints."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.bool_ | bool):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return v


def analyze_transfer(table: RunTable, hp: str = "optim.lr", axis: str = "model.d_model", bootstrap: int = 1000,
                     seed: int = 0, thresholds: Thresholds = Thresholds()) -> dict:
    """The section-5 transfer protocol over a RunTable; a JSON-serialisable dict (null for missing numbers)."""
    if hp == axis:
        raise ConfigError(f"--hp and --axis are both {hp}; pass --hp the swept hyperparameter (e.g. optim.lr) "
                          "and --axis the scaled dimension (e.g. model.d_model)")
    _check_key(table, hp, "hp")
    _check_key(table, axis, "axis")
    if any(_number(r[axis]) <= 0 for r in table.rows):
        raise ConfigError(f"--axis {axis}: needs positive values (its log2 is the abscissa of the slope)")
    keys, tied = find_panel_keys(table, hp, axis)
    cells, dropped = _cells(table, hp, axis, keys)
    rng = np.random.default_rng(seed)
    panels, n_above = [], 0
    for values in sorted(cells, key=str):
        by_width = cells[values]
        for c in by_width.values():
            m = c.means()
            above = np.isfinite(m) & (m > MAX_RATIO * np.where(np.isfinite(m), m, np.inf).min())
            n_above += int(c.n_valid[:, above].sum())
        panels.append({"panel": dict(zip(keys, values, strict=True)),
                       **_panel(by_width, axis, bootstrap, rng, thresholds)})
    n_dropped = {"diverged_or_nan": dropped["diverged_or_nan"], "above_1.2x_min": n_above,
                 "unfinished": len(table.unfinished), "nonpositive_hp": dropped["nonpositive_hp"]}
    n_runs = len(table.rows) + len(table.unfinished)
    return _jsonable({"hp": hp, "axis": axis, "metric": table.metric, "panel_keys": keys, "tied_keys": tied,
                      "n_runs": n_runs, "n_used": n_runs - sum(n_dropped.values()), "n_dropped": n_dropped,
                      "thresholds": asdict(thresholds), "bootstrap": bootstrap, "panels": panels})


# --- reporting ----------------------------------------------------------------------------------------------------
def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def format_report(result: dict) -> str:
    """A readable table per panel (axis value, log2 eta* with CI, loss, penalty) and the panel's verdict."""
    r, th, axis = result, result["thresholds"], result["axis"]
    d = r["n_dropped"]
    out = [f"transfer of {r['hp']} across {axis} ({r['metric']}): {r['n_runs']} runs, {r['n_used']} used; "
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
                   f" (<= {100 * th['penalty']:g}%), wider is better: {p['wider_is_better']} "
                   f"(monotone on {mono} of the common grid)")
        out.append(f"  verdict: {'TRANSFERS' if p['transfers'] else 'does not transfer'}")
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
    cells, _ = _cells(table, hp, axis, keys)
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
        title = ", ".join(_name(k, v, short=False) for k, v in p["panel"].items()) or "all runs"
        verdict = "transfers" if p["transfers"] else "does not transfer"
        ax.set_title(f"{title}\n{verdict} (drift {_f(p['drift'], '.2f')}, slope {_f(p['slope'], '+.2f')})",
                     fontsize=10)
        ax.set_xlabel(f"log2 {HP_LABELS.get(hp, hp)}")
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
