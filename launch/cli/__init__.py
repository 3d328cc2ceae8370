"""The `testbed` command: a thin face over config, train, accounting and benchmarks (no logic of its own)."""

from __future__ import annotations

import argparse
import sys

from testbed.analysis import registry
from testbed.launch.cli import fits, runs, sweeps
from testbed.launch.cli.runs import default_run_dir  # noqa: F401 - the default `testbed train` directory

from testbed import compile_cache
from testbed.config import ConfigError

# the commands in the order `testbed --help` lists them
ORDER = ("train", "info", "config", "env", "bench", "train-pack", "fetch-corpus", "datasets", "export", "sweep",
         "status", "fit", "backtest", "compare", "simulate", "plan", "quickstart", "plot", "report", "transfer",
         "coordcheck", "launch")
# commands that compile programs in this process (fits, training) use the persistent compilation cache (`bench` does
# not: it measures compile time)
COMPILING = ("train", "train-pack", "fit", "backtest", "compare", "simulate", "plan", "quickstart", "plot",
             "report", "transfer", "coordcheck")
COMMANDS = sorted((*runs.COMMANDS, *sweeps.COMMANDS, *fits.COMMANDS), key=lambda c: ORDER.index(c.name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__,
                                     epilog=f"laws for testbed fit LAW: {', '.join(registry.names())}")
    sub = parser.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, epilog=c.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter if c.epilog else argparse.HelpFormatter)
        for flags, kw in c.options:
            p.add_argument(*flags, **kw)
        p.set_defaults(fn=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in COMPILING:
        compile_cache.enable()
    try:
        return args.fn(args)
    except ConfigError as e:  # the one place a refusal becomes `testbed CMD: error: ...` and exit 2
        print(f"testbed {args.command}: error: {e}", file=sys.stderr)
        return 2
