"""Fault injection for the reliability tests (tests/reliability): make a trainer fail at a named point, on cue.

Set `TESTBED_FAULT="ACTION:POINT[@N]"` (several, comma-separated) in a process's environment; the N-th time
(default: the first) the code passes `faults.point(POINT)`, or the time it passes it with `at=N` (points that
carry a step, e.g. `step`), ACTION happens:

  kill    SIGKILL this process: a preemption without warning, an OOM kill, a node lost
  torn    write the first half of the bytes about to be written, then SIGKILL (a torn write; points that write)
  enospc  raise OSError(ENOSPC) here: the disk filled up at this write

Points (grep `faults.point` for the places):
  compile                      before the train step is compiled
  restore                      before the latest checkpoint is read
  step (at=s)                  step s dispatched, its result not yet read
  eval (at=s)                  step s's eval dispatched, not yet read
  checkpoint (at=s)            step s's (asynchronous) checkpoint save started, not yet committed
  finalize                     every step and checkpoint done, summary.json not yet written
  append:metrics.jsonl         a batch of metric rows about to be appended (torn: half of them written)
  write:NAME (config.yaml, metrics.jsonl, summary.json)
                               an atomic write: the temporary file is written, not yet renamed over NAME

Unset (always, outside the tests) `point` returns at its first line: no cost in the train loop.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "TESTBED_FAULT"
ACTIONS = ("kill", "torn", "enospc")


def _parse(text: str | None) -> dict[str, tuple[str, int]]:
    plan: dict[str, tuple[str, int]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        action, _, rest = item.strip().partition(":")
        name, _, n = rest.partition("@")
        if action not in ACTIONS or not name:
            raise ValueError(f"{ENV}={text!r}: expected ACTION:POINT[@N] items, ACTION one of {', '.join(ACTIONS)}")
        plan[name] = (action, int(n) if n else 1)
    return plan


_PLAN = _parse(os.environ.get(ENV))
_hits: dict[str, int] = {}


def point(name: str, at: int | None = None, fd: int | None = None, data: bytes | None = None) -> None:
    """A named place where a test may inject a fault; `at` is the step (else the N-th pass counts), and a
    writer passes the descriptor and bytes it is about to write (for `torn`)."""
    if not _PLAN:
        return
    planned = _PLAN.get(name)
    if planned is None:
        return
    action, n = planned
    if at is None:
        _hits[name] = at = _hits.get(name, 0) + 1
    if at != n:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected by {ENV} at {name})")
    if action == "torn" and fd is not None and data:
        os.write(fd, data[: max(1, len(data) // 2)])
    os.kill(os.getpid(), signal.SIGKILL)
