"""A fit's result (`testbed fit LAW`, analysis/registry.py) as text for a terminal, and as strict JSON."""

from __future__ import annotations

from testbed.analysis import load

from testbed.runstore import jsonable  # noqa: F401 (report.jsonable: the encoder the --json printers use)


def format_text(out: dict) -> str:
    """The JSON's headline as a few lines for a terminal."""
    ci = out.get("ci") or {}
    lines = [f"{out['law']}: {out['formula']}  ({out['n_points']} points)"]
    if out["law"] == "auto":
        ch = out["choice"]
        at = f"at ~{ch['factor']:.3g}x extrapolation" if ch["factor"] else "over all cuts"
        scores = ", ".join(f"{k} {v:.3%}" for k, v in sorted(ch["scores"].items(), key=lambda kv: kv[1]))
        lines = [f"auto: chose {out['chosen']} (backtest median |error| {at}: {scores})",
                 f"{out['chosen']}: {out['formula']}  ({out['n_points']} points)"]
    for k, v in out["params"].items():
        lines.append(f"  {k:>8} = {v:.6g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""))
    for k, v in out["derived"].items():
        if isinstance(v, float):
            lines.append(f"  {k:>8} = {v:.6g}" + (f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""))
    d = out["diagnostics"]
    extra = "".join(f" {k}={d[k]:.3g}" for k in ("grad_norm", "hessian_condition") if k in d)
    lines.append(f"  converged={d['converged']}{extra} fit {d.get('grid_fit_s', d.get('fit_s', '-'))}s"
                 + (f", bootstrap {d['bootstrap']['fit_s']}s" if "bootstrap" in d else ""))
    if "warning" in d:
        lines.append(f"  WARNING: {d['warning']}")
    if d.get("unidentified"):
        lines.append(f"  not pinned by these data: {', '.join(d['unidentified'])}")
        lines += [f"    {hint} ({', '.join(k for k, h in d['to_pin'].items() if h == hint)})"
                  for hint in dict.fromkeys(d.get("to_pin", {}).values())]
    for p in out.get("predict") or []:
        at = ", ".join(f"{k}={p[k]:.4g}" for k in p if k not in ("loss", "ci", "pi", "pi_level", "factor",
                                                                   "backtest_points"))
        lines.append(f"  predict {at}: loss {p['loss']:.4f}" + (f"  CI [{p['ci'][0]:.4f}, {p['ci'][1]:.4f}]"
                                                                  if "ci" in p else "")
                     + (f"  {p['pi_level']:.0%} PI [{p['pi'][0]:.4f}, {p['pi'][1]:.4f}] at {p['factor']:.3g}x"
                        if "pi" in p and "pi_level" in p else ""))
    if "pi_method" in out:
        lines.append(f"  CI: parameter noise (bootstrap); PI: {out['pi_method']}")
    note = load.describe_exclusions(out["excluded"])
    if note:
        lines.append(f"  {note}")
    if "holdout" in out:
        h = out["holdout"]
        if "runs" in h:  # curve laws: whole curves predicted
            lines.append(f"  held out {len(h['runs'])} run(s) ({h['expr']}): curves predicted with mean |rel error| "
                         f"{h['mean_abs_rel_error']:.3%}; final loss observed -> predicted:")
            lines += [f"    {r.get('label', rid)}: {r['final_loss']:.4f} -> {r['final_pred']:.4f} "
                      f"({r['final_rel_error']:+.2%})" for rid, r in h["runs"].items()]
        else:
            lines.append(f"  held out {h['n_points']} ({h['expr']}): mean |rel error| "
                         f"{h['mean_abs_rel_error']:.3%}, max {h['max_abs_rel_error']:.3%}")
            if "baseline" in h:
                b = h["baseline"]
                lines.append(f"  {b['law']} on the same points: mean |rel error| {b['mean_abs_rel_error']:.3%}, "
                             f"max {b['max_abs_rel_error']:.3%}")
    return "\n".join(lines)
