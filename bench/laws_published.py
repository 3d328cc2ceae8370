"""Backtests and the `fit auto` procedure on published sweeps: which law extrapolates, and are the intervals
calibrated? Prints one JSON line per set and a markdown table (the one in docs/laws.md).

    python bench/laws_published.py --data DIR [--sets epoch,llama3,...] [--evaluate] [--out results/]

DIR holds the published tables (the layout below: Epoch's Chinchilla extraction, the Llama 3 IsoFLOP points,
Marin's 2026 IsoFLOP sweeps, Porian et al.'s points, Gadre et al.'s models, Li et al.'s (Mis)Fitting runs).
--evaluate adds the honest check of `fit auto`: at each outer cut it sees only the runs below the cut (its own
inner backtest chooses the law and sizes the intervals) and predicts the runs above it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import bands  # bench/bands.py
import pandas as pd
from testbed.analysis import autofit, backtest, load

from testbed import hardware
from testbed.config import ConfigError
from testbed.runstore import dumps

MARIN = "N=parameter_count,D=throughput/total_tokens,loss=eval/paloma/macro_loss,C=throughput/total_gflops*1e9"
# name -> (file under DIR, --columns, --filter)
SETS = {
    "epoch": ("epoch_chinchilla/svg_extracted_data.csv", "N=Model Size,C=Training FLOP,loss=loss", None),
    "llama3": ("llama3_isoflops/isoflops_points.csv", "C=compute_budget,D=training_tokens,loss=validation_loss", None),
    "marin-nemotron": ("open_athena_isoflops/marin_202603_raw_isoflop-nemotron.csv", MARIN, None),
    "marin-comma": ("open_athena_isoflops/marin_202603_raw_isoflop-comma.csv", MARIN, None),
    "marin-dclm": ("open_athena_isoflops/marin_202603_raw_isoflop-dclm.csv", MARIN, None),
    "porian-rw": ("porian_resolving/isoflop_points.csv", "C=flops",
                  "dataset == 'rw' and hparams == 'tuned' and warmup == 'short' and decay == 'const' and "
                  "param_count == 'standard' and val == 'val'"),
    "gadre-rpj": ("mlfoundations_scaling/models_flat.csv", "loss=loss_c4_val,N_nonembed=N_no_embed",
                  "dataset == 'rpj'"),
    "misfitting": ("misfitting_li2025/scaling_results_last_ckpt_only.csv", "N_nonembed=N_no_emb", None),
    "steplaw": ("steplaw/dense_lr_bs_loss.csv", "", None),
    "muennighoff": ("sldbench_secondary/data_constrained_muennighoff.csv", "N=params,D=tokens", None),
    # the rest of the published tables with (N, D, loss): other configurations and re-extractions
    "porian-owt2": ("porian_resolving/isoflop_points.csv", "C=flops",
                    "dataset == 'owt2' and hparams == 'tuned' and warmup == 'short' and decay == 'const' and "
                    "param_count == 'standard' and val == 'val'"),
    "extract-ml_scalefit": ("open_athena_isoflops/isoflops_extract_all.csv", "N=params,D=tokens,C=budget",
                            "experiment == 'ml_scalefit__massivetext__chinchilla'"),
    "extract-misfitting": ("open_athena_isoflops/isoflops_extract_all.csv", "N=params,D=tokens,C=budget",
                           "experiment == 'misfitting__fineweb_c4__transformer'"),
    "misfitting-ckpts": ("misfitting_li2025/scaling_results.csv", "N_nonembed=N_no_emb", None),
    "steplaw-moe": ("steplaw/moe_lr_bs_loss.csv", "", None),
}
# not run: sldbench_secondary/vocab_scaling_tao.csv's loss column (Lossu) is a unigram-normalized loss, negative on
# every row, which no log-space law here can fit
# runs at several LRs (and batch sizes) per (N, D): each (N, D)'s best, as a tuned sweep would give
BEST_OF = {"misfitting": "misfitting_best_lr.csv", "steplaw": "steplaw_best_lr_bs.csv",
           "misfitting-ckpts": "misfitting_ckpts_best_lr.csv", "steplaw-moe": "steplaw_moe_best_lr_bs.csv"}


def rows_of(data: Path, name: str) -> pd.DataFrame:
    path, columns, filter = SETS[name]
    src = data / path
    if name in BEST_OF:
        df = pd.read_csv(src)
        df[["N", "D"]] = df[["N", "D"]].astype(float)  # int64 products overflow
        best = df.loc[df.groupby(["N", "D"])["loss"].idxmin()]
        src = Path(tempfile.mkdtemp()) / BEST_OF[name]
        best.to_csv(src, index=False)
    return load.usable(load.load(src, columns=load.parse_columns(columns), filter=filter))[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="directory holding the published tables")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--evaluate", action="store_true", help="also score fit auto out of sample (nested)")
    ap.add_argument("--out", type=Path, help="write each set's full result (every point) here")
    ap.add_argument("--check", action="store_true", help="with --evaluate: exit 1 unless fit auto's 90%% intervals "
                    "cover 80-96%% of the held-out runs over the sets (docs/laws.md: 87.9%% of 796 over 14 sets)")
    args = ap.parse_args()
    if args.check and not args.data.is_dir():
        bands.not_measurable(f"--data {args.data}: not here (the published tables)")
    if args.check and not args.evaluate:
        ap.error("--check scores fit auto's intervals: add --evaluate")
    table = []
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        rows = rows_of(args.data, name)
        bt = backtest.backtest(rows, bootstrap=args.bootstrap, progress=lambda m, s=name: print(f"{s}: {m}",
                                                                                               file=sys.stderr))
        res = {"set": name, "n_points": len(rows), "backtest": bt, "machine": hardware.machine()}
        if args.evaluate:
            try:
                res["evaluate"] = autofit.evaluate(rows, bootstrap=args.bootstrap,
                                                   progress=lambda m, s=name: print(f"{s} (evaluate): {m}",
                                                                                          file=sys.stderr))
            except ConfigError as e:  # e.g. too few budgets for a nested cut: said in the table, not a crash
                res["evaluate_skipped"] = str(e)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(dumps(res))
        summary = {law: {k: r.get(k) for k in ("n_points", "median_abs_rel_error", "worst_abs_rel_error", "bias",
                                               "ci_coverage", "pi_coverage_loco", "factor_range")}
                   for law, r in bt["laws"].items()}
        line = {"set": name, "machine": res["machine"], "n_points": len(rows), "cuts": len(bt["cuts"]), "laws": summary,
                "skipped": bt["skipped"], "wall_s": res["wall_s"]}
        if "evaluate_skipped" in res:
            line["auto_skipped"] = res["evaluate_skipped"]
        elif args.evaluate:
            ev = res["evaluate"]
            line["auto"] = {k: ev[k] for k in ("n_points", "pi_coverage", "median_abs_rel_error",
                                               "worst_abs_rel_error")}
            line["auto"]["chosen"] = [c["chosen"] for c in ev["cuts"]]
        print(json.dumps(line), flush=True)
        table.append(line)
    print(markdown(table))
    if args.check:
        scored = [t["auto"] for t in table if "auto" in t]
        n = sum(a["n_points"] for a in scored)
        covered = sum(a["pi_coverage"] * a["n_points"] for a in scored)
        return bands.verdict([bands.band(f"fit auto 90% PI coverage over {n} held-out runs, {len(scored)} sets",
                                         covered / max(n, 1), 0.80, 0.96)])
    return 0


def markdown(table: list[dict]) -> str:
    laws = [law for law in backtest.POINT_LAWS if any(law in t["laws"] for t in table)]
    head = "| set | runs | cuts | " + " | ".join(laws) + " | auto (chosen per outer cut) | auto 90% PI coverage |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for t in table:
        cells = [f"{t['laws'][law]['median_abs_rel_error']:.2%}" if law in t["laws"] else "-" for law in laws]
        auto = t.get("auto")
        a = f"{auto['median_abs_rel_error']:.2%} ({', '.join(auto['chosen'])})" if auto else "-"
        cov = f"{auto['pi_coverage']:.0%} of {auto['n_points']}" if auto else "-"
        lines.append(f"| {t['set']} | {t['n_points']} | {t['cuts']} | " + " | ".join(cells) + f" | {a} | {cov} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
