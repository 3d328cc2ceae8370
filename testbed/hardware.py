"""Where a run computes: the platform check (`train.platform`), what this process sees, and the versions behind it.

A run meant for an accelerator that lands on the CPU (the CPU-only jaxlib that `pip install -e .` gives) is the
failure this module exists for: `train.platform: gpu|tpu` refuses to start without one (exit 2, with the install
command), and with `auto` every run says at start what it trains on, warning when an NVIDIA GPU is visible to the
machine but not to JAX. `testbed env` prints `report()`. Datasheet peaks let MFU be compared with other trainers'.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform as host
import re
import shutil
import subprocess
from pathlib import Path

from testbed.config import Config, ConfigError

INSTALL = {"gpu": "pip install -e '.[cuda12]'", "tpu": "pip install -e '.[tpu]'"}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")

# Dense peak FLOP/s per chip from the vendors' datasheets, by jax device_kind prefix (longest match wins):
# (float32 matmuls as JAX runs them: TF32 tensor cores on A100/H100/H200, bf16 passes on TPUs; bfloat16).
DATASHEET_PEAK = {
    "NVIDIA H100 PCIe": (378e12, 756e12),
    "NVIDIA H100": (494.7e12, 989.4e12),  # SXM5
    "NVIDIA H200": (494.7e12, 989.4e12),
    "NVIDIA A100": (156e12, 312e12),
    "NVIDIA GH200": (494.7e12, 989.4e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),  # v5e
    "TPU v5p": (459e12, 459e12),
    "TPU v5": (459e12, 459e12),
    "TPU v6 lite": (918e12, 918e12),  # v6e (Trillium)
}


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
    """The chip's datasheet dense peak for `dtype` (float32 | bfloat16), or None (CPUs, unknown chips)."""
    match = max((k for k in DATASHEET_PEAK if device_kind.startswith(k)), key=len, default=None)
    if match is None:
        return None
    f32, bf16 = DATASHEET_PEAK[match]
    return bf16 if dtype == "bfloat16" else f32


def devices() -> dict:
    """What this process computes on: platform, device kind, devices (all processes) and local ones, processes."""
    import jax

    d = jax.devices()
    return {"platform": d[0].platform, "device_kind": d[0].device_kind, "device_count": len(d),
            "local_device_count": jax.local_device_count(), "process_count": jax.process_count()}


def cpu_model() -> str:
    """The CPU's model name as `lscpu` (else /proc/cpuinfo, else platform) reports it: timings name their machine."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        return host.processor() or host.machine()


def machine() -> dict:
    """The machine a measurement ran on, for every benchmark's JSON: CPU model, logical cores, architecture."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "arch": host.machine()}


def versions() -> dict:
    """Python and the installed versions of the packages a run's numbers depend on."""
    out = {"python": host.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> dict[str, str]:
    """{index: product name} of the NVIDIA GPUs the driver lists (`nvidia-smi -L`), whatever JAX sees; {} without
    the driver. Read without starting JAX (a launcher must not hold the devices its workers need)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^GPU (\d+): (.*?)(?: \(UUID:.*)?$", out, re.M)}


def device_numbers(folder: Path, prefix: str) -> list[int]:
    """N of every `folder/<prefix>N` device file (/dev/nvidia0, /dev/accel3, ...), sorted."""
    try:
        names = [p.name[len(prefix):] for p in folder.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def tpu_chips(env=os.environ) -> list[int]:
    """The TPU chips' device files: /dev/accelN (v2-v4), or /dev/vfio/N on a VM with TPU_ACCELERATOR_TYPE (v5e on)."""
    chips = device_numbers(Path("/dev"), "accel")
    if not chips and env.get("TPU_ACCELERATOR_TYPE"):
        chips = device_numbers(Path("/dev/vfio"), "")
    return chips


def hint(seen: dict) -> str | None:
    """A warning when the machine has accelerators JAX does not use (the CPU-only jaxlib), else None."""
    if seen["platform"] != "cpu":
        return None
    gpus = len(nvidia_smi())
    if gpus:
        return (f"JAX computes on the CPU, but this machine has {gpus} NVIDIA GPU(s) (nvidia-smi): install JAX's "
                f"GPU build ({INSTALL['gpu']}), or set train.platform: cpu to mean it")
    if tpu_chips():
        return (f"JAX computes on the CPU, but this machine looks like a TPU VM: install JAX's TPU build "
                f"({INSTALL['tpu']}), or set train.platform: cpu to mean it")
    return None


def select(cfg: Config) -> dict:
    """Checks `train.platform` before anything is written and pins JAX to it; returns `devices()`.

    auto: whatever JAX's default backend is. cpu / gpu / tpu: that platform or a ConfigError naming the fix. The
    pin (jax_platforms) only takes where JAX has not started its backends yet, as in `testbed train`; a process
    that already has them (a notebook) gets the check alone.
    """
    import jax

    want = cfg.train.platform
    if want != "auto":
        try:
            jax.config.update("jax_platforms", want)
        except Exception:  # backends already up: jax refuses the switch; the check below still applies
            pass
        try:
            jax.devices(want)
        except RuntimeError as e:
            fix = INSTALL.get(want, "use train.platform: auto")
            raise ConfigError(f"train.platform: {want} requested but JAX finds no {want} device here "
                              f"({str(e).splitlines()[0][:160]}); install JAX's {want} build ({fix}), run on a "
                              "machine that has one, or set train.platform: auto") from None
    seen = devices()
    if want != "auto" and seen["platform"] != want:
        raise ConfigError(f"train.platform: {want} requested, but this process already computes on "
                          f"{seen['platform']} (JAX started before the run); set JAX_PLATFORMS={want} or "
                          "train.platform: auto")
    return seen


def describe(seen: dict) -> str:
    """'cpu: 1 device (cpu), 1 process': the line a run prints at start."""
    n = seen["device_count"]
    procs = seen["process_count"]
    return (f"{seen['platform']}: {n} device{'s' if n != 1 else ''} ({seen['device_kind']}), "
            f"{procs} process{'es' if procs != 1 else ''}")


def report() -> dict:
    """`testbed env`: devices, versions, the machine, and a hint when accelerators go unused."""
    seen = devices()
    out = {**seen, "versions": versions(), "host": host.node(), "machine": host.machine(), "cpu": cpu_model(),
           "jax_platforms": os.environ.get("JAX_PLATFORMS") or None, "nvidia_gpus": len(nvidia_smi())}
    out["hint"] = hint(seen)
    return out


def format_report(r: dict) -> str:
    """`testbed env` as a few lines."""
    lines = [f"{'platform':17s} {describe(r)}", f"{'local devices':17s} {r['local_device_count']}",
             f"{'host':17s} {r['host']} ({r['machine']}, {r.get('cpu', '?')})"]
    lines += [f"{name:17s} {v}" for name, v in r["versions"].items()]
    if r["hint"]:
        lines.append(f"WARNING: {r['hint']}")
    return "\n".join(lines)
