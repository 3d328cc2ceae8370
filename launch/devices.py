"""This machine's accelerators, found without starting JAX, or pretended (`--accelerators gpu:8`).

A launcher must not initialize JAX itself: on a TPU VM only one process may hold the chips, so a launcher that
touched them would lock its own workers out, and on a GPU JAX would reserve most of every device's memory. Nor does
a `python -c 'import jax'` subprocess help: it costs seconds and, on a TPU, takes the chips for that time. So:
- GPUs: `nvidia-smi -L` (the driver's list: index and product name), narrowed to CUDA_VISIBLE_DEVICES when that is
  set (as SLURM and container runtimes do); `/dev/nvidia<N>` files when nvidia-smi is not on PATH.
- TPUs: the chips' device files, `/dev/accel<N>` (v2-v4) or `/dev/vfio/<N>` with TPU_ACCELERATOR_TYPE set (v5e
  and later); the kind from TPU_ACCELERATOR_TYPE (e.g. v4-8).
- JAX_PLATFORMS naming only `cpu` means the trainers will not use an accelerator: none are reported.
Pretend mode (`--accelerators KIND:N` or TESTBED_ACCELERATORS=KIND:N, KIND gpu or tpu; `none` for a CPU-only
sweep on an accelerator machine) reports N devices without looking, so a sweep's placement can be seen and tested
on any machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.config import ConfigError
from testbed.hardware import device_numbers, nvidia_smi, tpu_chips

KINDS = ("gpu", "tpu")
ENV_VAR = "TESTBED_ACCELERATORS"


@dataclass(frozen=True)
class Accelerators:
    kind: str  # "gpu" | "tpu" | "cpu" (no accelerator)
    ids: tuple[str, ...] = ()  # what CUDA_VISIBLE_DEVICES takes for each GPU; chip numbers on a TPU
    name: str = ""  # the product (NVIDIA H100 80GB HBM3, v4-8): part of the measured-layout cache key
    pretend: bool = False

    @property
    def count(self) -> int:
        return len(self.ids)

    def describe(self) -> str:
        if self.kind == "cpu":
            return "no accelerator"
        what = f"{self.count} {self.kind.upper()}{'s' if self.count != 1 else ''}"
        return f"{what} ({self.name})" if self.name else what


CPU = Accelerators("cpu")


def parse(text: str, source: str = "--accelerators") -> Accelerators:
    """'gpu:8' | 'tpu:4' | 'none' (or 'cpu'): pretended devices, for seeing and testing a placement anywhere."""
    value = text.strip().lower()
    if value in ("none", "cpu"):
        return Accelerators("cpu", pretend=True)
    m = re.fullmatch(r"(gpu|tpu):(\d+)", value)
    if not m or int(m.group(2)) < 1:
        raise ConfigError(f"{source}: expected KIND:N with KIND gpu or tpu and N >= 1 (e.g. gpu:8), or none; "
                          f"got {text!r}")
    kind, n = m.group(1), int(m.group(2))
    return Accelerators(kind, tuple(str(i) for i in range(n)), pretend=True)


def detect(flag: str | None = None, env: Mapping[str, str] = os.environ) -> Accelerators:
    """The flag's pretend devices, else TESTBED_ACCELERATORS's, else what this machine has (CPU when nothing)."""
    if flag:
        return parse(flag)
    if env.get(ENV_VAR):
        return parse(env[ENV_VAR], ENV_VAR)
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
    if platforms and not set(platforms) - {"cpu"}:
        return CPU
    return gpus(env) or tpus(env) or CPU


def for_backend(backend: str, flag: str | None) -> Accelerators | None:
    """The local backend's devices (detect); None for a cluster backend, whose nodes are not this machine."""
    if backend == "local":
        return detect(flag)
    if flag:
        raise ConfigError(f"--accelerators: places runs on this machine's devices (local backend); for {backend}, "
                          f"ask for devices under resources.{backend}")
    return None


def gpus(env: Mapping[str, str] = os.environ) -> Accelerators | None:
    """NVIDIA GPUs from the driver (nvidia-smi -L), narrowed to CUDA_VISIBLE_DEVICES; None when there are none."""
    found = nvidia_smi() or {str(i): "" for i in device_numbers(Path("/dev"), "nvidia")}
    if not found:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(v.strip() for v in visible.split(",") if v.strip())
        if not ids or ids[0].startswith("-"):  # "" or "-1": CUDA sees no GPU
            return None
    else:
        ids = tuple(found)
    names = {found.get(i, "") for i in ids} - {""}
    return Accelerators("gpu", ids, names.pop() if len(names) == 1 else ", ".join(sorted(names)))


def tpus(env: Mapping[str, str] = os.environ) -> Accelerators | None:
    """TPU chips from their device files; None when there are none."""
    chips = tpu_chips(env)
    if not chips:
        return None
    return Accelerators("tpu", tuple(str(i) for i in chips), env.get("TPU_ACCELERATOR_TYPE", ""))
