"""Does memory stay flat as a text corpus grows? Peak RSS of building the token cache and of training reads.
    python bench/text_memory.py [--sizes 10,100] [--check]
For each size (MB of UTF-8 text, written as a jsonl of ~4 KB documents), in fresh processes: the peak RSS of the
first `TextSource` (streams the corpus twice and writes the memory-mapped token cache), then of a second one (reads
the cache) drawing 500 batches of 16 x 128 tokens, then a 30-step `testbed train` of a small model on the corpus,
each with its process memory at the end split into anonymous memory
(what the process allocated) and file pages (the token file's pages it touched: shared, clean, reclaimable by the
kernel at any time). One JSON line. --check exits 1 unless the largest corpus's peak RSS while building and its
anonymous memory while reading and while training are within 1.5x of the smallest's (bench/bands.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bands  # bench/bands.py
import numpy as np

from testbed import hardware

WORDS = ("the of and to in is was for on that with as by at from his her an which or be are were this it not but "
         "king queen sword crown night day love death fair foul grief mirth wit scaling law loss token model").split()

CHILD = """
import json, resource, sys, time
from testbed.config import DataConfig
from testbed.data.text import TextSource
t0 = time.perf_counter()
src = TextSource.from_config(DataConfig(source="text", path=sys.argv[1], seq_len=128, cache_dir=sys.argv[2]), seed=0)
for step in range(int(sys.argv[3])):
    src.train_batch(step, 16)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
kb = lambda k: int(status[k].split()[0]) / 1024 if k in status else None
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": kb("RssAnon"), "file_mb": kb("RssFile"),
                  "seconds": time.perf_counter() - t0, "train_tokens": int(src.meta["train_tokens_total"])}))
"""


TRAIN = """
import json, resource, sys, time
from testbed import config as C
from testbed.train import train
cfg = C.load(None, ["data.source=text", f"data.path={sys.argv[1]}", f"data.cache_dir={sys.argv[2]}",
                    "data.seq_len=128", "data.eval_sequences=32", "model.d_model=32", "model.n_heads=2",
                    "model.n_layers=1", "train.batch_size=16", "train.steps=30", "train.eval_every=30",
                    "optim.warmup_steps=3"])
t0 = time.perf_counter()
s = train(cfg, sys.argv[3], progress=False, log=lambda _: None)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
kb = lambda k: int(status[k].split()[0]) / 1024
print(json.dumps({"status": s["status"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": kb("RssAnon"), "file_mb": kb("RssFile"), "seconds": time.perf_counter() - t0}))
"""


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Distinct ~4 KB documents of random words, as jsonl, until `megabytes` of text."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    target, written, i = megabytes << 20, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            text = f"doc {i}: " + " ".join(rng.choice(words, 700))
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text)
            i += 1


def child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100", help="corpus sizes in MB (default 10,100)")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sizes:
            corpus, cache = Path(tmp) / f"c{mb}.jsonl", Path(tmp) / f"cache{mb}"
            t0 = time.perf_counter()
            write_corpus(corpus, mb)
            cold, warm = child(CHILD, corpus, cache, 0), child(CHILD, corpus, cache, 500)
            run = child(TRAIN, corpus, cache, Path(tmp) / f"run{mb}")  # `testbed train` from the cache
            rows[mb] = {"cold": cold, "warm": warm, "train": run, "write_s": round(time.perf_counter() - t0, 1)}
    lo, hi = rows[min(sizes)], rows[max(sizes)]
    result = {"bench": "text_memory", "machine": hardware.machine(), "sizes_mb": rows,
              "cold_rss_ratio": hi["cold"]["rss_mb"] / lo["cold"]["rss_mb"],
              "warm_rss_ratio": hi["warm"]["rss_mb"] / lo["warm"]["rss_mb"],
              "warm_anon_ratio": hi["warm"]["anon_mb"] / lo["warm"]["anon_mb"],
              "train_anon_ratio": hi["train"]["anon_mb"] / lo["train"]["anon_mb"]}
    print(json.dumps(result))
    if not a.check:
        return 0
    checks = [bands.band("peak RSS ratio, building the cache (largest / smallest corpus)", result["cold_rss_ratio"],
                         hi=1.5),
              bands.band("anonymous memory ratio, reading the cache (largest / smallest corpus)",
                         result["warm_anon_ratio"], hi=1.5),
              bands.band("anonymous memory ratio, a 30-step training run (largest / smallest corpus)",
                         result["train_anon_ratio"], hi=1.5)]
    return bands.verdict(checks)


if __name__ == "__main__":
    raise SystemExit(main())
