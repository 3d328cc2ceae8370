"""`testbed` commands for sweeps: sweep, status, plan, quickstart."""

from __future__ import annotations

import argparse
import sys

from testbed.launch.cli.spec import Command, arg, stderr

from testbed.config import ConfigError
from testbed.runstore import dumps


def workers_arg(text: str) -> int | None:
    """argparse type for --workers: a count, or 'auto' (None: the placement or layout decides)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or auto, got {text!r}") from None


def cmd_sweep(args) -> int:
    from testbed.launch import sweep

    if args.dry_run:
        from testbed.launch import devices, plan

        fps = sweep.parse_flops_per_s(args.flops_per_s)
        runs = sweep.expand(args.sweep)
        rows = sweep.describe(runs, args.out, flops_per_s=fps)
        p = plan.dry_run(rows, {r.run_id: r.cfg for r in runs}, args.workers, args.pack,
                         devices.detect(args.accelerators))
        print(dumps(rows) if args.json else sweep.format_table(rows))
        if not args.json:
            print(plan.format_placement(p), file=sys.stderr)
            print(sweep.format_dry_run(rows, fps), file=sys.stderr)
        return 0
    if not args.out:
        raise ConfigError("--out: pass a sweep directory, e.g. --out runs/transfer_lr (or use --dry-run)")
    summary = sweep.run_sweep(args.sweep, args.out, workers=args.workers, pack=args.pack, layout=args.layout,
                              backend=args.backend, wait=not args.no_wait, accelerators=args.accelerators)
    print(dumps(summary))
    return 0 if summary["ok"] or args.no_wait else 1


def cmd_status(args) -> int:
    from testbed.launch import status

    report = status.sweep_status(args.sweep_dir)
    print(dumps(report) if args.json else status.format_status(report))
    return 0


def cmd_plan(args) -> int:
    from testbed.launch import nextruns

    widths = [int(w) for w in args.widths.split(",") if w.strip()] if args.widths else None
    kw = dict(target_flops=args.target_flops, target=args.target, budget=args.budget, k=args.k, widths=widths,
              bootstrap=args.bootstrap, seed=args.seed)
    if args.progressive:
        if args.threshold is None:
            raise ConfigError("--progressive: pass --threshold W, the relative 95% interval width to stop at "
                              "(e.g. 0.02: the interval spans 2% of the prediction)")
        out = nextruns.progressive(args.sweep_dir, threshold=args.threshold, max_rounds=args.max_rounds,
                                   workers=args.workers, log=stderr, **kw)
        print(dumps(out))
        return 0
    out = nextruns.plan(args.sweep_dir, out=args.out, stop_width=args.threshold, **kw)
    print(dumps(nextruns.jsonable(out)) if args.json else nextruns.format_text(out))
    return 0


def cmd_quickstart(args) -> int:
    from testbed.launch import quickstart

    out = quickstart.quickstart(args.out, size=args.size, workers=args.workers, log=stderr, seed=args.seed)
    print(dumps(out) if args.json else quickstart.format_text(out))
    return 0


JSON = arg("--json", action="store_true")
SEED = arg("--seed", type=int, default=0)

COMMANDS = (
    Command("sweep", "expand a sweep file into runs and train them (skips completed runs)", (
        arg("sweep", help="YAML sweep file, e.g. configs/transfer_lr.yaml"),
        arg("--out", help="sweep directory: one run directory per run id, manifest.json, sweep.yaml"),
        arg("--workers", type=workers_arg, default=None,
            help="local backend: trainer processes at once; auto (default): one per GPU (one for a TPU VM's "
                 "chips) when accelerators are found, else the measured layout, cores split between them"),
        arg("--accelerators", default=None, metavar="KIND:N",
            help="local backend: pretend this machine has N devices (gpu:8, tpu:4; none: CPU only) to see or test "
                 "the placement (default: TESTBED_ACCELERATORS, else the GPUs/TPUs found)"),
        arg("--pack", type=int, default=None, metavar="K",
            help="train up to K same-shape runs (differing in lr, weight decay, seed, init std) as one "
                 "vmapped program per unit (default: the layout on local, 1 on slurm/ray)"),
        arg("--layout", default="auto", choices=("auto", "measure"),
            help="local, without --workers/--pack: auto = the cached or (for >= 10 min of runs) measured "
                 "fastest processes x pack layout, else one at a time; measure = measure now"),
        arg("--backend", default="local", choices=("local", "slurm", "ray"),
            help="local process pool, SLURM job arrays (submitit) or Ray tasks; settings under resources:"),
        arg("--no-wait", action="store_true", help="slurm: submit and return (follow with testbed status)"),
        arg("--dry-run", action="store_true", help="print the runs (N, D, FLOPs, status); write nothing"),
        arg("--json", action="store_true", help="with --dry-run: a JSON list instead of a table"),
        arg("--flops-per-s", default=None,
            help="with --dry-run: achieved FLOP/s for the est_time column (default 5e10, a small model on a "
                 "2-core CPU), or 'measure' (this machine's matmul peak x 0.18)"),
    ), cmd_sweep),
    Command("status", "a sweep's runs by status (pending, running, completed, ...), with a table", (
        arg("sweep_dir", help="a sweep directory written by testbed sweep"),
        arg("--json", action="store_true", help="counts and per-run rows as JSON"),
    ), cmd_status),
    Command("plan", "the next runs that most shrink the 95%% interval of a prediction at a target compute, per "
            "FLOP, as a sweep file; --progressive trains them round by round", (
        arg("sweep_dir", help="a sweep directory with finished runs (testbed sweep --out)"),
        arg("--law", default="chinchilla", choices=("chinchilla",), help="the law whose fit is planned for"),
        arg("--target-flops", type=float, required=True, help="the compute C you want to predict at"),
        arg("--target", default="loss", choices=("loss", "n_opt"),
            help="loss: the predicted loss at the compute-optimal point of C; n_opt: N_opt(C)"),
        arg("--budget", type=float, default=None, help="FLOPs for the new runs (default: the FLOPs already in the "
            "sweep); with --progressive, for all rounds together"),
        arg("--k", type=int, default=4, help="runs per plan (per round with --progressive)"),
        arg("--widths", default=None, help="candidate d_model values, comma-separated (default: the sweep's widths "
            "and 1.5x, 2x, 3x its widest)"),
        arg("--out", default=None, help="write the proposals as a sweep file (train it with testbed sweep "
            "NEXT.yaml --out SWEEP_DIR)"),
        arg("--threshold", type=float, default=None, help="95%% interval width to reach, ln(hi/lo): 0.02 is "
            "2%% of the loss; for n_opt 0.69 is a factor of 2. Planning stops once it is predicted; "
            "--progressive stops when the fit reaches it"),
        arg("--progressive", action="store_true", help="fit -> plan -> train rounds in SWEEP_DIR until "
            "--threshold or --budget; history in SWEEP_DIR/plan/history.jsonl (shown by testbed report)"),
        arg("--max-rounds", type=int, default=10, help="--progressive: at most this many rounds"),
        arg("--workers", type=int, default=None, help="--progressive: trainer processes per round"),
        arg("--bootstrap", type=int, default=200, metavar="K", help="resamples for the fit's intervals"),
        SEED,
        JSON,
    ), cmd_plan),
    Command("quickstart", "train an IsoFLOP sweep on the embedded data, fit the scaling law, predict and train a "
            "held-out larger run, write the report (5-9 min on 2 CPU cores)", (
        arg("--out", default="runs/quickstart", help="output directory (default runs/quickstart)"),
        arg("--size", default="small", choices=("small", "tiny", "gpu"),
            help="small (2-core laptop, default) | tiny (a 2-3 minute check of the pipeline) | gpu (one accelerator)"),
        arg("--seed", type=int, default=0, help="seed of every run: initialization, data order and eval set "
            "(another seed is another quickstart: use another --out)"),
        arg("--workers", type=int, help="training processes (default: the measured local layout)"),
        arg("--json", action="store_true", help="print the summary as JSON"),
    ), cmd_quickstart),
)
