"""`testbed report SWEEP_DIR --out DIR`: one static HTML page with the run table, every fit that applies (parameters,
CIs, diagnostics), the figures and the warnings; it opens from disk with no server and no internet.

Every kind of analysis/plotkinds.py is tried; one that does not apply to this sweep (no batch sweep for critbatch,
one schedule for annealing, ...) is listed with the reason instead of failing the report. Figures are written as
PNG (shown) and SVG (linked). The page is built in a temporary directory and moved into place, so an interrupted
report never leaves a half-written DIR.
"""

from __future__ import annotations

import datetime
import html
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from testbed.analysis import load, plotkinds, report

from testbed import provenance
from testbed.config import ConfigError

# the report's kinds: analysis that reads a run table or curves (not published-table-only laws)
REPORT_KINDS = ("curves", "compute", "isoflop", "envelope", "contour", "holdout", "backtest", "overtrain",
                "transfer", "schedules", "landscape", "critbatch", "plan")
TABLE_COLUMNS = ("run_id", "status", "N", "N_nonembed", "D", "C", "loss")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ddd;padding:.2em .5em;
text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em;margin:.5em 0}
.ok{background:#eef8ee;border-left:4px solid #3a3;padding:.5em 1em;margin:.5em 0}
.muted{color:#777;font-size:.85em} code{background:#f4f4f4;padding:0 .2em}
details{margin:.5em 0} pre{background:#f8f8f8;padding:.5em;overflow-x:auto;font-size:.8em}
"""
# On load the page records how many of its figures the browser decoded (tests read this from headless Chromium).
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.figure'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures', imgs.length);
  document.body.setAttribute('data-figures-rendered', ok);
});
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{_fmt(v)}</td>" for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _varying(df: pd.DataFrame) -> list[str]:
    """Config keys that differ across runs (the sweep's axes), dotted names only."""
    keys = []
    for c in df.columns:
        if "." not in c or c in TABLE_COLUMNS:
            continue
        vals = df[c].dropna().astype(str)
        if vals.nunique() > 1:
            keys.append(c)
    return keys


def _run_table(df: pd.DataFrame) -> str:
    axes = _varying(df)
    cols = [c for c in TABLE_COLUMNS if c in df.columns] + axes
    order = df.sort_values([c for c in ("C", "N") if c in df.columns] or ["run_id"])
    return _table(cols, order[cols].to_numpy().tolist())


def _params_table(fit: dict) -> str:
    ci = fit.get("ci") or {}
    rows = [[k, v, *(ci.get(k) or [None, None])] for k, v in (fit.get("params") or {}).items()
            if isinstance(v, int | float)]
    return _table(["parameter", "value", "95% CI low", "95% CI high"], rows) if rows else ""


def _diagnostics(fit: dict) -> str:
    d = fit.get("diagnostics") or {}
    keys = ("converged", "grad_norm", "hessian_condition", "starts", "starts_within_1pct_of_best", "at_bound",
            "outside_start_grid", "grid_fit_s", "fit_s")
    items = [f"{k}={_fmt(d[k]) if not isinstance(d[k], list) else html.escape(', '.join(map(str, d[k])) or '-')}"
             for k in keys if k in d]
    return f"<p class='muted'>diagnostics: {'; '.join(items)}</p>" if items else ""


def _warnings(fit: dict, kind: str) -> list[str]:
    out = []
    d = fit.get("diagnostics") or {}
    if d.get("warning"):
        out.append(f"{kind}: {d['warning']}")
    if d.get("converged") is False and not d.get("warning"):
        out.append(f"{kind}: the fit did not converge")
    if d.get("at_bound"):
        out.append(f"{kind}: parameter(s) on a bound: {', '.join(d['at_bound'])}")
    return out  # runs excluded are the same for every fit: one warning at the top (build)


def _section_html(s: plotkinds.Section, svg: str | None) -> str:
    parts = [f"<h2 id='{s.kind}'>{html.escape(s.title)}</h2>"]
    if s.figure is not None:
        link = f" <a href='figures/{html.escape(svg)}'>SVG</a>" if svg else ""
        parts.append(f"<figure><img class='figure' src='figures/{html.escape(s.figure.name)}' "
                     f"alt='{html.escape(s.title)}'><figcaption>{'<br>'.join(map(html.escape, s.notes))}"
                     f" <a href='figures/{html.escape(s.figure.name)}'>PNG</a>{link}</figcaption></figure>")
    if s.fit:
        formula = s.fit.get("formula")
        if formula:
            parts.append(f"<p><code>{html.escape(formula)}</code> ({_fmt(s.fit.get('n_points'))} points)</p>")
        parts.append(_params_table(s.fit))
        parts.append(_diagnostics(s.fit))
        full = json.dumps(report.jsonable(s.fit), indent=1, default=str)[:20000]
        parts.append(f"<details><summary>full fit JSON</summary><pre>{html.escape(full)}</pre></details>")
    return "\n".join(parts)


def build(sweep_dir: str | Path, out_dir: str | Path, *, bootstrap: int = 200, seed: int = 0,
          kinds: tuple[str, ...] = REPORT_KINDS, holdout: str | None = None, progress=print,
          preface: str | None = None, fits: plotkinds.Fits | None = None) -> dict:
    """Writes out_dir/index.html and out_dir/figures/; returns what was drawn and what was skipped (and why).
    preface: text shown first, verbatim (testbed quickstart's summary); fits: a Fits over sweep_dir whose memoized
    fits the figures reuse."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is not a directory; pass the directory `testbed sweep` wrote")
    unknown = [k for k in kinds if k not in plotkinds.KINDS]
    if unknown:
        raise ConfigError(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(plotkinds.KINDS)}")
    df = load.load(sweep_dir)  # a ConfigError here (no run directories) stops before anything is written
    _, excluded = load.usable(df)
    work = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "figures").mkdir(parents=True)
    fits = fits or plotkinds.Fits(sweep_dir, bootstrap=bootstrap, seed=seed, holdout=holdout)
    sections, skipped, warnings, timings = [], {}, [], {}
    for kind in kinds:
        t0 = time.perf_counter()
        try:
            s = plotkinds.draw(kind, fits, work / "figures" / f"{kind}.png")
            svg = None
            try:  # the same figure as SVG (fits are memoized: this redraws, it does not refit)
                svg = plotkinds.draw(kind, fits, work / "figures" / f"{kind}.svg").figure.name
            except Exception:  # noqa: BLE001 - the PNG is the report's figure; a missing SVG costs a link
                pass
            sections.append((s, svg))
            if s.fit and kind not in ("compute", "contour"):  # compute/contour share the chinchilla fit's warnings
                warnings += _warnings(s.fit, kind)
            elif s.fit and kind == "compute":
                warnings += _warnings(s.fit, "chinchilla")
        except ConfigError as e:
            skipped[kind] = str(e)
        timings[kind] = round(time.perf_counter() - t0, 2)
        progress(f"report: {kind} {'drawn' if kind not in skipped else 'skipped'} ({timings[kind]:.1f}s)")
    counts = df["status"].fillna("incomplete").value_counts().to_dict() if "status" in df.columns else {}
    note = load.describe_exclusions(excluded)
    if note:
        warnings.insert(0, f"runs: {note}; every fit leaves them out")
    prov = provenance_summary(load.provenances(sweep_dir))
    warnings += [f"provenance: the runs differ in {key} ({_counted(values)}); their numbers may not be comparable"
                 for key, values in prov["differs"].items()]
    page = _page(sweep_dir, df, counts, sections, skipped, warnings, preface, prov)
    (work / "index.html").write_text(page, encoding="utf-8")
    (work / "report.json").write_text(json.dumps(report.jsonable({
        "sweep": str(sweep_dir), "runs": len(df), "status": counts, "excluded": excluded,
        "sections": {s.kind: {"figure": f"figures/{s.figure.name}" if s.figure else None, "fit": s.fit}
                     for s, _ in sections},
        "skipped": skipped, "warnings": warnings, "seconds": timings, "provenance": prov}), default=str, indent=1))
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return {"index": str(out_dir / "index.html"), "drawn": [s.kind for s, _ in sections], "skipped": skipped,
            "warnings": warnings, "seconds": timings, "provenance": prov}


def provenance_summary(provs: dict[str, dict]) -> dict:
    """What the runs' provenance blocks share (`common`, from the first run that has one), where they differ
    (`differs`: testbed.provenance.differences), and how many runs have none (`missing`)."""
    have = {run: p for run, p in provs.items() if p}
    first = next(iter(have.values()), {})
    differs = provenance.differences(have)
    common = {k: v for k, v in first.items() if k not in ("host", "command") and k not in differs
              and not any(d.startswith(f"{k}.") for d in differs)}
    return {"common": common, "differs": differs, "missing": len(provs) - len(have),
            "hosts": sorted({str(p.get("host")) for p in have.values()})}


def _counted(values: dict[str, list[str]]) -> str:
    return "; ".join(f"{v}: {len(runs)} run{'s' if len(runs) > 1 else ''}" for v, runs in values.items())


def _provenance_html(prov: dict) -> str:
    rows = [[k, ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else v]
            for k, v in prov["common"].items()]
    rows += [[k, f"differs: {_counted(v)}"] for k, v in prov["differs"].items()]
    rows.append(["hosts", ", ".join(prov["hosts"]) or "-"])
    if prov["missing"]:
        rows.append(["runs without provenance", f"{prov['missing']} (unfinished, or written by an older testbed)"])
    return "<h2 id='provenance'>Provenance</h2>" + _table(["", "value"], rows)


def format_built(out: dict) -> str:
    """`testbed report` as text: where the page is, how many figures, what did not apply, the warnings."""
    skipped = ", ".join(out["skipped"]) or "none"
    lines = [f"wrote {out['index']} ({len(out['drawn'])} figures; not applicable: {skipped})"]
    common = out.get("provenance", {}).get("common", {})
    if common:
        v = common.get("versions", {})
        code = (f"; git {common['git_commit'][:10]}{' (dirty)' if common.get('git_dirty') else ''}"
                if "git_commit" in common else "")
        lines.append(f"  provenance: jax {v.get('jax')}, python {v.get('python')}, {common.get('backend')} "
                     f"{common.get('device_kind')} x{common.get('device_count')}{code}")
    return "\n".join(lines + [f"  WARNING {w}" for w in out["warnings"]])


def _page(sweep_dir: Path, df: pd.DataFrame, counts: dict, sections, skipped: dict, warnings: list[str],
          preface: str | None = None, prov: dict | None = None) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    toc = " · ".join(f"<a href='#{s.kind}'>{html.escape(s.kind)}</a>" for s, _ in sections)
    warn = ("".join(f"<div class='warn'>{html.escape(w)}</div>" for w in warnings) if warnings
            else "<div class='ok'>no warnings: every fit converged, no run was excluded</div>")
    skip = ("<h2 id='skipped'>Not drawn for this sweep</h2>" + _table(["kind", "why"], [[k, v] for k, v in
                                                                                       skipped.items()])
            if skipped else "")
    body = "\n".join(_section_html(s, svg) for s, svg in sections)
    prov_link = " · <a href='#provenance'>provenance</a>" if prov else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>testbed report: {html.escape(sweep_dir.name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>Sweep report: {html.escape(str(sweep_dir))}</h1>
<p class="muted">{len(df)} runs ({html.escape(status)}); generated {when} by <code>testbed report</code></p>
<p>{toc}{' · <a href="#skipped">not drawn</a>' if skipped else ''} · <a href="#runs">runs</a>{prov_link}</p>
{f"<h2>Summary</h2><pre>{html.escape(preface)}</pre>" if preface else ""}
<h2>Warnings</h2>
{warn}
{body}
{skip}
<h2 id="runs">Runs</h2>
{_run_table(df)}
{_provenance_html(prov) if prov else ""}
<script>{CHECK_SCRIPT}</script>
</body></html>
"""
