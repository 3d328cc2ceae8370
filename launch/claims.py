"""Claims: at most one worker (process, node, SLURM task or Ray task) trains a run directory at a time.

A claim is an exclusive `flock` on RUN_DIR/.claim, taken without blocking. The kernel drops the lock when the
last process holding the open file goes away, so a claim held by a dead worker is recovered by construction: no
stale-lock heuristics, no clock skew. The worker passes the locked descriptor to its training subprocess
(`pass_fds`), so a worker killed with -9 while its trainer still runs keeps the run claimed until the trainer
exits too (a second trainer on the same run directory would interleave two curves).

On shared filesystems, Linux NFS clients implement `flock` with NFS byte-range locks (the server releases a dead
client's locks when its lease expires, 90 s by default on NFSv4); Lustre needs the `flock` mount option. Where
locking is unsupported, `try_claim` raises ClaimError with that advice instead of silently double-training.

The file also records who holds the claim (host, pid, worker, since) for `testbed status`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

CLAIM_FILE = ".claim"


class ClaimError(OSError):
    """The filesystem cannot lock: claims would not be exclusive."""


@dataclass
class Claim:
    """A held claim; `fd` is the locked descriptor (pass it to the trainer so the lock outlives us if need be)."""

    run_dir: Path
    fd: int

    def release(self) -> None:
        """Unlocks by closing our descriptor (a trainer that inherited it keeps the lock until it exits)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(fd: int, mode: int, path: Path) -> bool:
    """Non-blocking flock: True when acquired, False when another process holds it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise ClaimError(e.errno, f"{path}: this filesystem does not support flock, so two workers could "
                                      "train the same run; put the sweep directory on a local disk or NFSv4, "
                                      "or mount Lustre with -o flock") from None
        raise


def try_claim(run_dir: str | Path, worker: str | None = None) -> Claim | None:
    """Claims run_dir for this process, or returns None when a live worker already holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd, fcntl.LOCK_EX, path):
            os.close(fd)
            return None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return Claim(run_dir, fd)


def holder(run_dir: str | Path) -> dict | None:
    """Who is training run_dir right now ({host, pid, worker, since}), or None when nobody is."""
    path = Path(run_dir) / CLAIM_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _lock(fd, fcntl.LOCK_SH, path):
            return None  # we could lock it, so nobody holds it (closing releases our probe)
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except json.JSONDecodeError:
            return {}  # held, but the holder has not written its details yet
    finally:
        os.close(fd)
