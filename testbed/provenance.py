"""Where a run's numbers came from: package versions, python, platform, devices, host, command line, git state.

Recorded in every summary.json (`provenance`) and as a comment block at the head of config.yaml, so a bitwise
resume, a config hash or a surprising loss can be tied to the environment that produced it. `testbed report` shows
it per sweep and warns when runs of one sweep differ in what could change their numbers (`COMPARED`).
Nothing here imports jax: the devices come from testbed.hardware.devices(), which the trainer has already called.
"""

from __future__ import annotations

import functools
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from testbed import hardware

ROOT = Path(__file__).resolve().parents[1]  # the checkout testbed runs from (an editable install)
# what may differ between the runs of one sweep without changing its numbers: host and command line do;
# versions, platform, devices and code do not (report warns on those)
COMPARED = ("versions", "platform", "device_kind", "device_count", "process_count", "git_commit", "git_dirty")


@functools.lru_cache(maxsize=1)
def git_state(root: Path = ROOT) -> dict:
    """{git_commit, git_dirty} of testbed's own checkout, or {} when it is not a git checkout (a wheel install)."""
    if not (root / ".git").exists():
        return {}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0 or status.returncode != 0:
        return {}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def collect(devices: dict | None = None) -> dict:
    """This process's provenance; `devices` is testbed.hardware.devices() (platform, device kind and count, ...)."""
    d = devices or {}
    return {
        "versions": hardware.versions(),  # python and jax, jaxlib, flax, optax, orbax-checkpoint, numpy
        "testbed": _own_version(),
        "platform": platform.platform(),
        **{k: d[k] for k in ("device_kind", "device_count", "process_count") if k in d},
        "backend": d.get("platform"),
        "host": socket.gethostname(),
        "command": shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]),  # as typed: `-m ...` kept
        **git_state(),
    }


def _own_version() -> str | None:
    import importlib.metadata

    for name in ("scaling-testbed", "testbed"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def header(prov: dict) -> str:
    """config.yaml's leading comment block: the provenance of the process that wrote it, one key per line."""
    lines = ["# written by testbed; provenance of the process that started this run (summary.json has the one that "
             "finished it):"]
    for key, value in prov.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        text = " ".join(str(value).splitlines())  # one comment line each (a `python -c` command has newlines)
        lines.append(f"#   {key}: {text[:500]}{' ...' if len(text) > 500 else ''}")
    return "\n".join(lines) + "\n"


def _flat(prov: dict) -> dict:
    """COMPARED keys of one provenance block, versions split per package ('versions.jax': '0.7.1')."""
    out = {}
    for key in COMPARED:
        value = prov.get(key)
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in prov:
            out[key] = value
    return out


def differences(provs: dict[str, dict]) -> dict[str, dict]:
    """{key: {value: [run, ...]}} for each COMPARED key (versions per package) on which the runs (run name ->
    provenance) disagree; runs without a provenance block (written by an older testbed) are left out."""
    seen: dict[str, dict[str, list[str]]] = {}
    for run, prov in provs.items():
        for key, value in _flat(prov or {}).items():
            seen.setdefault(key, {}).setdefault(str(value), []).append(run)
    return {key: values for key, values in seen.items() if len(values) > 1}
