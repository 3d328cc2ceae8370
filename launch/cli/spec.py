"""The parts of the `testbed` command table: a Command (name, help, its options as data, its handler), the options
several commands share, and what every handler does alike (load the config, log to stderr, turn run statuses
into an exit code)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from testbed import config

Option = tuple[tuple[str, ...], dict]  # an argparse argument as data: (flags, keyword arguments)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]
    run: Callable[[argparse.Namespace], int]  # the handler: the exit code
    epilog: str | None = None  # shown verbatim under the command's --help


def arg(*flags: str, **kw) -> Option:
    """One argparse argument: the flags (or the positional name) and add_argument's keywords."""
    return flags, kw


def config_args(required: bool = True) -> tuple[Option, ...]:
    """CONFIG (a YAML file) and --set KEY=VALUE overrides."""
    return (arg("config", nargs=None if required else "?", help="YAML config, e.g. configs/tiny.yaml"),
            arg("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)"))


def load_config(args: argparse.Namespace) -> config.Config:
    """The config of CONFIG + --set; a line on stderr when muP's companion settings were implied."""
    notes: list[str] = []
    cfg = config.load(args.config, args.overrides, notes)
    for line in notes:
        stderr(line)
    return cfg


def stderr(msg: str) -> None:
    """Progress and logs go to stderr (stdout holds the result)."""
    print(msg, file=sys.stderr, flush=True)


def exit_code(statuses: list[str]) -> int:
    """REQUEUE_EXIT when a run stopped after checkpointing (SIGTERM/SIGUSR1: requeue and resume), 0 when every run
    completed or diverged, else 1."""
    if any(s == "incomplete" for s in statuses):
        from testbed.preempt import REQUEUE_EXIT

        return REQUEUE_EXIT
    return 0 if all(s in ("completed", "diverged") for s in statuses) else 1


def int_list(text: str) -> list[int]:
    """argparse type: '64,128,256' -> [64, 128, 256]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 64,128,256, got {text!r}") from None
