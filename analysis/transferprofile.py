"""The loss-vs-hp curves of a transfer sweep as numbers: per panel, one row per axis value, one column per grid point.

Where an optimum sits at the grid's edge (weight decay that never helps, say) drift and slope say little; whether a
scaling rule keeps the curves' shape across width still shows in how much each hp value costs at each width. Cells
are the seed-mean loss relative to the row's lowest (in %), and, where runs logged sigma_max, the seed-mean (geometric)
normalized sigma_max of the hidden matrices.
"""

from __future__ import annotations

import math
from collections import defaultdict

from testbed.analysis.runtable import RunTable
from testbed.analysis.transfer import find_panel_keys, points

from testbed.runstore import number


def profiles(table: RunTable, hp: str, axis: str, hp_exponent: float = 0.0) -> list[dict]:
    """Per panel: {panel, x (log2 hp grid), rows: {axis value: {x: (loss % over the row's min, sigma or None)}},
    lowest: {axis value: the row's lowest seed-mean loss}}."""
    keys, _ = find_panel_keys(table, hp, axis)
    loss: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    sigma: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for panel, w, x, r, ok in points(table, hp, axis, keys, hp_exponent):
        if not ok:
            continue
        x = round(x, 6)
        loss[panel][w][x].append(number(r[table.metric]))
        if r.get("sigma_norm_hidden"):
            sigma[panel][w][x].append(math.log(r["sigma_norm_hidden"]))
    out = []
    for panel in sorted(loss, key=str):
        rows, lowest, xs = {}, {}, sorted({x for by_x in loss[panel].values() for x in by_x})
        for w, by_x in sorted(loss[panel].items()):
            means = {x: sum(v) / len(v) for x, v in by_x.items()}
            low = lowest[w] = min(means.values())
            rows[w] = {x: (100 * (m / low - 1),
                           math.exp(sum(sigma[panel][w][x]) / len(sigma[panel][w][x])) if sigma[panel][w][x] else None)
                       for x, m in means.items()}
        out.append({"panel": dict(zip(keys, panel, strict=True)), "x": xs, "rows": rows, "lowest": lowest})
    return out


def format_profiles(result: list[dict], hp: str, axis: str) -> str:
    """Markdown tables: loss over each row's minimum, then normalized sigma_max where logged."""
    out, short = [], axis.split(".")[-1]
    for p in result:
        title = ", ".join(f"{k}={v}" for k, v in p["panel"].items()) or "all runs"
        head = f"| {short} \\ log2 {hp.split('.')[-1]} | " + " | ".join(f"{x:g}" for x in p["x"]) + " |"
        rule = "|---" * (len(p["x"]) + 1) + "|"
        out += [f"{title}: loss over the row's lowest", "", head + " lowest |", rule + "---|"]
        for w, cells in p["rows"].items():
            out.append(f"| {w:g} | " + " | ".join(f"{cells[x][0]:+.2f}%" if x in cells else "-" for x in p["x"])
                       + f" | {p['lowest'][w]:.4f} |")
        if any(c[1] is not None for cells in p["rows"].values() for c in cells.values()):
            out += ["", f"{title}: normalized sigma_max of the hidden matrices", "", head, rule]
            for w, cells in p["rows"].items():
                out.append(f"| {w:g} | " + " | ".join(
                    f"{cells[x][1]:.3f}" if x in cells and cells[x][1] is not None else "-" for x in p["x"]) + " |")
        out.append("")
    return "\n".join(out).rstrip("\n")
