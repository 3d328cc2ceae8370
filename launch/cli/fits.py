"""`testbed` commands for analysis: fit, compare, simulate, plot, report, transfer."""

from __future__ import annotations

from pathlib import Path

from testbed.analysis import registry
from testbed.launch.cli.spec import Command, arg, stderr

from testbed.config import ConfigError
from testbed.runstore import dumps


def _emit(args, out: dict, plot, text) -> int:
    """--plot (the figure's path goes into the output), then JSON or the text report."""

    if args.plot:
        plot(args.plot)
        out["plot"] = args.plot
    print(dumps(out) if args.json else text(out))
    return 0


def cmd_fit(args) -> int:
    from testbed.analysis import load

    out, objs = registry.run(args.law, args.data, columns=load.parse_columns(args.columns), filter=args.filter,
                             bootstrap=args.bootstrap, holdout=args.holdout, seed=args.seed, predict=args.predict,
                             laws=args.laws, objective=args.objective)
    return _emit(args, out, lambda path: registry.plot(objs, out, path), registry.get(args.law).format)


def cmd_backtest(args) -> int:
    from testbed.analysis import backtest, fitplots, load

    rows, excluded = load.usable(load.load(args.data, columns=load.parse_columns(args.columns), filter=args.filter))
    out = backtest.backtest(rows, backtest.parse_laws(args.laws), by=args.by, bootstrap=args.bootstrap,
                            seed=args.seed, max_cuts=args.cuts, min_budgets=args.min_budgets, progress=stderr)
    out = {**out, "excluded": excluded, "data": {"source": args.data, "filter": args.filter}}
    return _emit(args, out, lambda path: fitplots.plot_backtest(out, path), backtest.format_text)


def cmd_compare(args) -> int:
    from testbed.analysis import compare, load

    kw = dict(law=args.law, bootstrap=args.bootstrap, seed=args.seed, columns=load.parse_columns(args.columns),
              filter=args.filter)
    if args.b is None:
        out, curves = compare.compare_by(args.a, by=args.by, table_out=args.table, baseline=args.baseline, **kw)
    elif args.by or args.table or args.baseline:
        raise ConfigError("--by / --table / --baseline: for ONE sweep or table holding several recipes; with two "
                          "inputs each is one recipe. Drop them or the second input")
    else:
        out, curves = compare.compare(args.a, args.b, **kw)
    return _emit(args, out, lambda path: compare.plot(curves, out, path), compare.format_text)


def _read_sweep(path: Path) -> list[dict]:
    """A sweep file's runs (N = params_total, D = tokens, exact FLOPs) for `testbed simulate --design SWEEP.yaml`."""
    from testbed.launch import sweep

    return sweep.describe(sweep.expand(path))


def cmd_simulate(args) -> int:
    from testbed.analysis import simulate

    params = simulate.parse_params(args.law, args.params)
    if args.design == "plan":
        from testbed.analysis import simplan

        out = simplan.compare(params, args.noise, args.grid, target=args.target, target_flops=args.target_flops,
                              k=args.k, repeats=args.repeats or 10, bootstrap=args.bootstrap, seed=args.seed,
                              log=stderr)
        if args.plot:
            simplan.plot(out, args.plot)
        print(dumps(out) if args.json else simplan.format_text(out))
        return 0
    out = simulate.simulate(args.law, params, args.noise, args.design, offset=args.offset,
                            repeats=args.repeats or 100, bootstrap=args.bootstrap,
                            methods=tuple(m for m in args.methods.split(",") if m.strip()),
                            target_flops=args.target_flops, seed=args.seed, log=stderr, read_sweep=_read_sweep)
    print(dumps(out) if args.json else simulate.format_text(out))
    return 0


def cmd_plot(args) -> int:
    from testbed.analysis import load, plotkinds

    fits = plotkinds.Fits(args.data, columns=load.parse_columns(args.columns), filter=args.filter,
                          bootstrap=args.bootstrap, seed=args.seed, holdout=args.holdout)
    section = plotkinds.draw(args.kind, fits, Path(args.out or f"{args.kind}.png"))
    print(dumps(plotkinds.summary(section)) if args.json else plotkinds.format_section(section))
    return 0


def cmd_report(args) -> int:
    from testbed.analysis import html

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else html.REPORT_KINDS
    out_dir = args.out or Path(args.sweep_dir) / "report"
    out = html.build(args.sweep_dir, out_dir, bootstrap=args.bootstrap, seed=args.seed, kinds=kinds,
                     holdout=args.holdout, progress=stderr)
    print(dumps(out) if args.json else html.format_built(out))
    return 0


def cmd_transfer(args) -> int:
    from testbed.analysis import transfer

    table = transfer.load(args.sweep_dir, metric=args.metric)
    if args.table:  # before the analysis: a sweep's table is worth keeping even where no optimum can be located
        from testbed.analysis import runtable

        written = str(runtable.write_csv(table, args.table, keep=(args.hp, args.axis)))
    if args.profile:
        from testbed.analysis import transferprofile

        found = transferprofile.profiles(table, args.hp, args.axis, args.hp_scaling)
        print(dumps(found) if args.json else transferprofile.format_profiles(found, args.hp, args.axis))
        return 0
    result = transfer.analyze_transfer(table, hp=args.hp, axis=args.axis, bootstrap=args.bootstrap,
                                       hp_exponent=args.hp_scaling)
    if args.table:
        result["table"] = written
    if args.plot:
        result["plot"] = str(transfer.plot_transfer(result, table, args.plot))
    print(dumps(result) if args.json else transfer.format_report(result))
    return 0


JSON = arg("--json", action="store_true")
SEED = arg("--seed", type=int, default=0)
DATA = arg("data", help="a sweep directory, or a .csv/.csv.gz/.parquet file")
LAWS_HELP = "laws:\n" + "\n".join(f"  {e.name:14s} {e.description}" for e in registry.ENTRIES)

COMMANDS = (
    Command("fit", "fit a scaling law to a sweep directory or a CSV, with bootstrap CIs", (
        arg("law", help=" | ".join(registry.names())),
        DATA,
        arg("--columns", help="map standard names to file columns, e.g. 'N=Model Size,C=Training FLOP,loss=loss'"
            " (D = C / 6N when only C is given; COLUMN*NUMBER rescales, e.g. C=total_gflops*1e9)"),
        arg("--filter", help="keep rows matching a pandas query, e.g. \"loss < 3\" or \"`model.d_model` >= 64\""),
        arg("--bootstrap", type=int, default=0, metavar="K", help="K resamples of the points for CIs"),
        arg("--holdout", help="fit the other rows, predict these (a pandas expression, e.g. \"C > 1e21\")"),
        arg("--seed", type=int, default=0, help="bootstrap seed"),
        arg("--predict", help="the law's loss at points, e.g. \"N=1e9,D=2e10;N=7e10,D=1.4e12\": each with a "
            "prediction interval `pi` from the law's backtest errors, and a CI (parameter noise) under --bootstrap"),
        arg("--laws", help="fit auto: the laws it chooses from (default: chinchilla,chinchilla-vp,kaplan,farseer)"),
        arg("--objective", default="huber", choices=("huber", "lsq"), help="overtrain, downstream: huber (Huber "
            "on log residuals, the default) or lsq (least squares on the loss or error itself, as Gadre et al. "
            "fitted them)"),
        JSON,
        arg("--plot", help="write the fit figure here (.png, .svg or .pdf)"),
    ), cmd_fit, epilog=LAWS_HELP),
    Command("backtest", "rolling-origin backtest by compute: fit each law below a cut, predict the runs above "
            "it; errors vs extrapolation factor, bias, interval coverage", (
        DATA,
        arg("--laws", help="comma-separated point laws (default: chinchilla,chinchilla-vp,kaplan,farseer)"),
        arg("--columns", help="map standard names to file columns, as in testbed fit"),
        arg("--filter", help="keep rows matching a pandas query, as in testbed fit"),
        arg("--by", default="C", help="the compute column whose budgets are cut (default C: exact FLOPs, or "
            "6 N D)"),
        arg("--cuts", type=int, default=4, help="hold out the 1, 2, ..., CUTS largest budgets (default 4)"),
        arg("--min-budgets", type=int, default=2, help="budgets every cut leaves to fit (default 2)"),
        arg("--bootstrap", type=int, default=100, metavar="K", help="resamples per fit for the CIs whose "
            "coverage is reported (0: none)"),
        SEED,
        JSON,
        arg("--plot", help="write the error-vs-extrapolation figure here (.png, .svg or .pdf)"),
    ), cmd_backtest),
    Command("compare", "fit one law per recipe (two sweeps, or one sweep split --by a column); differences, "
            "L*(C) across compute, crossover, compute multiplier", (
        arg("a", help="sweep directory or CSV (recipe A; alone: every recipe, told apart by --by)"),
        arg("b", nargs="?", help="sweep directory or CSV (recipe B)"),
        arg("--by", help="with one input: the column naming each run's recipe (default: recipe, else optim.name)"),
        arg("--baseline", metavar="RECIPE", help="with one input: the recipe every other is compared against (A); "
            "default: the first in sorted order"),
        arg("--table", metavar="OUT.csv", help="with one input: write its runs (recipe column, N, D, C, loss, "
            "status) as a CSV that compare reads in place of the sweep"),
        arg("--law", default="chinchilla", help="chinchilla | chinchilla-vp"),
        arg("--bootstrap", type=int, default=200, metavar="K", help="resamples per sweep (>= 20)"),
        arg("--columns", help="column mapping for CSV inputs, as in testbed fit"),
        arg("--filter", help="pandas query applied to both inputs"),
        SEED,
        JSON,
        arg("--plot", help="write the comparison figure here"),
    ), cmd_compare),
    Command("simulate", "synthetic losses from a known law on a design, refitted: each method's bias and CI "
            "coverage for the parameters and the compute-optimal target (docs/simulation.md)", (
        arg("--law", default="chinchilla", help="the true law (chinchilla)"),
        arg("--params", help="its parameters, e.g. E=1.8,A=400,B=2000,alpha=0.34,beta=0.37"),
        arg("--noise", default="lognormal:0.01", help="lognormal:SIGMA | hetero:SIGMA (sigma x (N/N_min)^-0.5)"
            " | seed:SIGMA (one draw per model size + SIGMA/4 per point); SIGMA in log loss"),
        arg("--design", required=True, help="a sweep YAML (N = params_total, D = tokens), or "
            "isoflop:C1,C2,...:K:SPAN (K sizes over SPAN decades centred on the true N_opt(C)), or plan "
            "(the adaptive plan vs --grid: compute each needs for the same interval at the target)"),
        arg("--grid", default="isoflop:1e18,1e19,1e20:7:1.5", help="--design plan: the uniform IsoFLOP grid "
            "the adaptive plan is compared with (its 2 smallest budgets seed the plan)"),
        arg("--target", default="loss", choices=("loss", "n_opt"), help="--design plan: the prediction whose "
            "interval is compared (loss at the compute-optimal point, or N_opt)"),
        arg("--k", type=int, default=4, help="--design plan: runs per plan round"),
        arg("--plot", default=None, help="--design plan: write the width-vs-compute figure here"),
        arg("--offset", type=float, default=1.0, help="isoflop: designs: centre the sizes on OFFSET x the "
            "true N_opt (off-centre grids)"),
        arg("--repeats", type=int, default=None, help="synthetic data sets (default 100; 10 with --design "
            "plan, whose repeats each refit every round)"),
        arg("--bootstrap", type=int, default=100, metavar="K", help="resamples per fit for the CIs"),
        arg("--methods", default="chinchilla,isoflop", help="comma-separated: chinchilla, chinchilla-vp, "
            "isoflop (default chinchilla,isoflop)"),
        arg("--target-flops", type=float, help="compute for the N_opt / loss prediction (default 10x the "
            "design's largest)"),
        SEED,
        JSON,
    ), cmd_simulate),
    Command("plot", "one paper-style figure from a sweep directory or a published table", (
        arg("kind", help="curves | compute | isoflop | envelope | contour | holdout | backtest | transfer | "
            "schedules | landscape | critbatch | overtrain | downstream"),
        DATA,
        arg("--out", help="figure path (.png, .svg or .pdf; default KIND.png)"),
        arg("--columns", help="column mapping for tables, as in testbed fit"),
        arg("--filter", help="pandas query on the rows, as in testbed fit"),
        arg("--holdout", help="holdout: the rows to predict (default: the largest-compute fifth)"),
        arg("--bootstrap", type=int, default=200, metavar="K", help="resamples for bands and CIs"),
        SEED,
        arg("--json", action="store_true", help="print the figure path and the fit behind it as JSON"),
    ), cmd_plot),
    Command("report", "a static HTML report of a sweep: run table, fits with CIs, figures, warnings", (
        arg("sweep_dir", help="a sweep directory written by testbed sweep"),
        arg("--out", help="output directory (index.html, figures/, report.json); default SWEEP_DIR/report"),
        arg("--bootstrap", type=int, default=200, metavar="K", help="resamples for CIs and bands"),
        arg("--holdout", help="runs to hold out for the predicted-vs-observed figure (default: the "
            "largest-compute fifth)"),
        arg("--kinds", help="comma-separated subset of the figures (default: all that apply)"),
        SEED,
        JSON,
    ), cmd_report),
    Command("transfer", "LR/WD transfer across width or depth, from a sweep's run directories or its CSV table", (
        arg("sweep_dir", metavar="SWEEP", help="a sweep directory (subdirectories are run directories), or a .csv "
            "run table written by --table"),
        arg("--hp", default="optim.lr", help="the swept hyperparameter (default optim.lr)"),
        arg("--axis", default="model.d_model", help="the scaled dimension (default model.d_model)"),
        arg("--metric", default="final_eval_loss", help="final_eval_loss | final_train_loss"),
        arg("--hp-scaling", type=float, default=0.0, metavar="E", help="judge the rule hp ~ axis^E: optima of "
            "hp / (axis / smallest axis)^E (e.g. 0.5 for weight decay ~ sqrt(width); default 0: hp itself)"),
        arg("--bootstrap", type=int, default=1000, help="seed resamples for the CI of log2 opt (0: none)"),
        arg("--json", action="store_true", help="print the result as one JSON line"),
        arg("--plot", metavar="OUT.png", help="write the loss vs log2 hp figure (.png, .svg, .pdf)"),
        arg("--profile", action="store_true", help="print the curves instead: per axis value and hp grid point, "
            "the loss over the row's lowest and the normalized sigma_max (markdown tables)"),
        arg("--table", metavar="OUT.csv", help="write the run table (varying config keys, seed, metric, normalized "
            "sigma_max, status; one row per run), which this command reads back in place of the sweep directory"),
    ), cmd_transfer),
)
