"""How to lay small same-shape runs out on this machine: trainer processes pinned to cores x runs packed per process.

A Layout runs `procs` trainer processes at once, each pinned to its share of the cores (XLA's intra-op pool
single-threaded when procs > 1, as worker_env sets), each training its runs `pack` at a time as one
vmapped program (testbed/pack.py), with extra `xla_flags`. For a sweep: units of `pack` runs
(`testbed train-pack`), `procs` local workers, `layout_env(layout)` as the workers' environment.

`measure_layouts` times candidates with worker processes (`python -m testbed.pack`): every candidate's workers
compile first, then the candidates take turns timing windows, several rounds, the workers of one candidate
running together; a candidate's rate is its best window. Interleaved best-of rounds keep other jobs on a shared
machine from favouring whichever candidate happened to run while it was quiet. `choose_layout` returns the
fastest, measured once per (shape, run count, machine) and cached in ~/.cache/testbed/layouts.json. One at a
time with default flags is always a candidate, so the choice is never slower than sequential as measured.

Nothing here imports jax: the timing runs in subprocesses.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.launch import devices

from testbed import config
from testbed.runstore import atomic_write_text
from testbed.vmappable import pack_key

CACHE = Path(os.environ.get("TESTBED_CACHE", Path.home() / ".cache" / "testbed")) / "layouts.json"
# XLA:CPU's YNNPACK fusion (jax 0.10.2) fuses attention's dot-softmax-dot into one kernel once the batch reaches
# 32 sequences; on this 2-core EPYC that ran the attention forward ~3x slower per sequence than the unfused ops,
# so a vmapped pack (batch K x 16) lost to one-at-a-time. An empty fusion-type list turns the fusion off.
NO_YNN = ("--xla_cpu_experimental_ynn_fusion_type=",)
# Appended to XLA_FLAGS when several runs share the machine. Accepted by the installed XLA (jax 0.10.2; an unknown
# --xla flag aborts the process at startup). It does not by itself shrink XLA:CPU's intra-op pool, which is sized
# from the process's CPU affinity mask: the affinity pinning in launch/runner.py is what splits the cores.
XLA_SHARED_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)


@dataclass(frozen=True)
class Layout:
    procs: int  # trainer processes at once, each pinned to cores // procs cores
    pack: int  # runs per vmapped program in each process (1: one at a time)
    xla_flags: tuple[str, ...] = ()  # extra XLA_FLAGS for the trainer processes

    @property
    def name(self) -> str:
        flags = "+no_ynn" if self.xla_flags == NO_YNN else "".join(f"+{f}" for f in self.xla_flags)
        return f"{self.procs}proc_x_pack{self.pack}{flags}"

    def as_dict(self) -> dict:
        return {**asdict(self), "xla_flags": list(self.xla_flags), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(d["procs"], d["pack"], tuple(d.get("xla_flags", ())))


SEQUENTIAL = Layout(1, 1)


def cores_available() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def core_sets(procs: int, cores: list[int]) -> list[set[int]]:
    """Process i gets an equal, disjoint share of `cores` (process i -> core i mod n when there are more processes
    than cores)."""
    k = max(1, len(cores) // procs)
    return [set(cores[i * k:(i + 1) * k]) or {cores[i % len(cores)]} for i in range(procs)]


def candidates(n_runs: int, n_cores: int) -> list[Layout]:
    """(a) one at a time, (b) one pack of all, (c) runs over the cores one at a time, (d) a pack per core, and
    packs of the powers of two between; each with default flags and with the YNNPACK fusion off."""
    procs = max(1, min(n_cores, n_runs))
    out = []
    for flags in ((), NO_YNN):
        for p in dict.fromkeys((1, procs)):
            top = max(1, n_runs // p)
            packs = [k for k in (2**i for i in range(top.bit_length())) if k < top] + [top]
            out += [Layout(p, k, flags) for k in packs]
    return list(dict.fromkeys(out))


def worker_env(workers: int, base: dict | None = None) -> dict:
    """The trainer environment when `workers` trainers share this machine (single-threaded XLA when > 1)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    if workers > 1:
        flags = env.get("XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join([*flags, *(f for f in XLA_SHARED_FLAGS if f not in flags)])
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes on one accelerator
    return env


def layout_env(layout: Layout, base: dict | None = None) -> dict:
    """The trainer environment for a layout: worker_env's (single-threaded XLA when procs > 1) + its flags."""
    env = worker_env(layout.procs, base)
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join([*flags, *(f for f in layout.xla_flags if f not in flags)])
    return env


class _Workers:
    """One layout's worker processes, pinned, compiled and waiting at their 'ready' barrier."""

    def __init__(self, cfg_path: Path, layout: Layout, duration_s: float, cores: list[int]):
        self.layout = layout
        self.err_path = cfg_path.with_name(f"{layout.name}.stderr")
        pinned = layout.procs > 1 and hasattr(os, "sched_setaffinity")
        sets = core_sets(layout.procs, cores) if pinned else [None] * layout.procs
        cmd = [sys.executable, "-m", "testbed.pack", str(cfg_path), "--pack", str(layout.pack), "--duration",
               str(duration_s)]
        self.procs = []
        with open(self.err_path, "w") as err:  # a file, not a pipe: a chatty worker cannot block on it
            for s in sets:
                self.procs.append(self._spawn(cmd, err, s))

    def _spawn(self, cmd: list[str], err, cores: set[int] | None) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                             env=layout_env(self.layout))
        if cores is not None:
            os.sched_setaffinity(p.pid, cores)  # before jax starts its thread pools, which inherit the mask
        return p

    def wait_ready(self) -> str | None:
        """None once every worker compiled; else the first failure's message."""
        for p in self.procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                self.close()
                lines = (self.err_path.read_text() + line).strip().splitlines()
                return lines[-1][:300] if lines else "worker exited"
        return None

    def window(self) -> list[dict]:
        """All workers time one window together (the barrier releases them at once)."""
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = [json.loads(p.stdout.readline()) for p in self.procs]
        for p in self.procs:
            p.stdout.readline()  # the next 'ready'
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.close()  # EOF: the worker exits
                    p.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    p.kill()
                    p.wait()


def measure(cfg: config.Config, layouts: list[Layout], duration_s: float = 2.0, rounds: int = 3,
            cores: list[int] | None = None, log=None) -> dict[Layout, dict]:
    """Aggregate steady-state tokens/s of each layout: the best of `rounds` interleaved windows."""
    cores = cores or cores_available()
    results: dict[Layout, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(config.dump_yaml(cfg))
        live: list[_Workers] = []
        try:
            for lay in layouts:  # compile one layout at a time: memory and CPU stay bounded
                w = _Workers(cfg_path, lay, duration_s, cores)
                err = w.wait_ready()
                if err is not None:
                    results[lay] = {**lay.as_dict(), "error": err}
                    continue
                live.append(w)
            windows: dict[Layout, list[float]] = {w.layout: [] for w in live}
            best: dict[Layout, list[dict]] = {}
            for r in range(rounds):
                for w in live:
                    res = w.window()
                    rate = sum(x["tokens_per_s"] for x in res)
                    windows[w.layout].append(rate)
                    if rate >= max(windows[w.layout]):
                        best[w.layout] = res
                    b = best[w.layout]
                    results[w.layout] = {**w.layout.as_dict(), "tokens_per_s": max(windows[w.layout]),
                                         "windows_tokens_per_s": windows[w.layout],
                                         "per_proc_tokens_per_s": [x["tokens_per_s"] for x in b],
                                         "compile_s": max(x["compile_s"] for x in b), "backend": b[0]["backend"]}
                if log is not None:
                    log(f"round {r + 1}/{rounds}: " + ", ".join(f"{w.layout.name} {windows[w.layout][-1]:.0f}"
                                                              for w in live))
        finally:
            for w in live:
                w.close()
    return results


def report(cfg: config.Config, n_runs: int, results: dict[Layout, dict], cores: int) -> dict:
    """The bench JSON for K = n_runs: packed (one process, pack of K) vs sequential, and every layout measured."""
    ok = {lay: r for lay, r in results.items() if "tokens_per_s" in r}
    seq = ok[SEQUENTIAL]["tokens_per_s"]
    rows = []
    for lay, r in results.items():
        rows.append({**r, **({"speedup_vs_sequential": r["tokens_per_s"] / seq} if lay in ok else {})})
    best = max(ok, key=lambda lay: ok[lay]["tokens_per_s"])
    packs = [lay for lay in ok if lay.procs == 1 and lay.pack == n_runs]
    packed = max(packs, key=lambda lay: ok[lay]["tokens_per_s"]) if packs else best
    return {"K": n_runs, "d_model": cfg.model.d_model, "tokens_per_s": ok[packed]["tokens_per_s"],
            "packed_layout": packed.name, "sequential_tokens_per_s": seq,
            "speedup_vs_sequential": ok[packed]["tokens_per_s"] / seq, "best_layout": best.as_dict(),
            "best_tokens_per_s": ok[best]["tokens_per_s"], "best_speedup_vs_sequential": ok[best]["tokens_per_s"] / seq,
            "layouts": rows, "cores": cores, "tokens_per_step": cfg.tokens_per_step, "machine": machine_id()}


def measure_layouts(cfg: config.Config, n_runs: int, duration_s: float = 2.0, rounds: int = 3,
                    cores: list[int] | None = None, layouts: list[Layout] | None = None, log=None) -> dict:
    """Every candidate layout for n_runs same-shape runs, timed; the fastest and its speedup over one at a time."""
    cores = cores or cores_available()
    layouts = layouts or candidates(n_runs, len(cores))
    if SEQUENTIAL not in layouts:
        layouts = [SEQUENTIAL, *layouts]
    load = os.getloadavg()
    out = report(cfg, n_runs, measure(cfg, layouts, duration_s, rounds, cores, log), len(cores))
    return {**out, "loadavg_before": load, "loadavg_after": os.getloadavg(), "duration_s": duration_s,
            "rounds": rounds}


def format_measured(result: dict) -> str:
    """`testbed bench --pack K` as text: packed vs sequential tokens/s, the fastest layout, then every layout's rate."""
    lines = [f"K={result['K']} d_model={result['d_model']}: packed {result['tokens_per_s']:.0f} tokens/s "
             f"({result['packed_layout']}), sequential {result['sequential_tokens_per_s']:.0f}, "
             f"speedup {result['speedup_vs_sequential']:.2f}x; fastest {result['best_layout']['name']} "
             f"{result['best_speedup_vs_sequential']:.2f}x"]
    for r in result["layouts"]:
        rate = f"{r['tokens_per_s']:10.0f} {r['speedup_vs_sequential']:5.2f}x" if "tokens_per_s" in r else r["error"]
        lines.append(f"  {r['name']:40s} {rate}")
    return "\n".join(lines)


def machine_id() -> str:
    """What a cached layout is valid for: CPU model, the CPUs we may use, architecture, and the accelerator the
    timing workers would run on (GPU or TPU kind and product; nothing added for a CPU-only machine)."""
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    base = f"{model or platform.processor()}|{len(cores_available())}cpu|{platform.machine()}"
    kind = device_kind()
    return base if kind == "cpu" else f"{base}|{kind}"


@functools.cache
def device_kind() -> str:
    """'cpu', or e.g. 'gpu:NVIDIA H100 80GB HBM3': this machine's real devices (pretend mode does not count),
    found without starting jax (launch/devices.py)."""
    acc = devices.detect(env={k: v for k, v in os.environ.items() if k != devices.ENV_VAR})
    return "cpu" if acc.kind == "cpu" else f"{acc.kind}:{acc.name or 'unknown'}"


def choose_layout(cfg: config.Config, n_runs: int, cores: list[int] | None = None, cache: Path | None = CACHE,
                  duration_s: float = 1.5, rounds: int = 3, refresh: bool = False) -> Layout:
    """The fastest measured layout for n_runs runs shaped like `cfg` (same pack_key), cached per machine.

    A few minutes the first time for a shape (228 s for d_model 64 x 8 runs on 2 cores); afterwards a file lookup.
    """
    cores = cores or cores_available()
    shape = _canonical(cfg)
    key = _cache_key(shape, n_runs, cores)
    table = _read_cache(cache)
    if not refresh and key in table:
        return Layout.from_dict(table[key]["layout"])
    result = measure_layouts(shape, n_runs, duration_s, rounds, cores)
    best = Layout.from_dict(result["best_layout"])
    if cache is not None:
        table = _read_cache(cache)  # re-read: another sweep may have written meanwhile
        table[key] = {"layout": best.as_dict(), "speedup_vs_sequential": result["best_speedup_vs_sequential"],
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "d_model": cfg.model.d_model,
                      "tokens_per_s": {r["name"]: r.get("tokens_per_s") for r in result["layouts"]}}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(table, indent=2) + "\n")
    return best


def cached_layout(cfg: config.Config, n_runs: int, cores: list[int] | None = None, cache: Path | None = CACHE
                  ) -> Layout | None:
    """choose_layout's answer if it was measured before on this machine, else None (measures nothing)."""
    entry = _read_cache(cache).get(_cache_key(_canonical(cfg), n_runs, cores or cores_available()))
    return Layout.from_dict(entry["layout"]) if entry else None


def _cache_key(shape: config.Config, n_runs: int, cores: list[int]) -> str:
    return f"{pack_key(shape)}|{n_runs}|{machine_id()}|{len(cores)}"


def _canonical(cfg: config.Config) -> config.Config:
    """The shape alone: training length and logging do not change a step's speed, so they do not split the cache."""
    raw = config.to_dict(cfg)
    raw["train"].update(steps=1000, tokens=None, eval_every=1000, checkpoint_every=1000)
    return config.from_dict(raw)


def _read_cache(cache: Path | None) -> dict:
    if cache is None or not cache.exists():
        return {}
    try:
        return json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
