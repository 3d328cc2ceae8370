"""Preemption: SIGTERM / SIGUSR1 / SIGUSR2 ask the train loop to checkpoint at the next step and exit for a requeue.

SLURM sends SIGUSR1 ahead of the time limit when the job asks for it (`#SBATCH --signal=USR1@90`) and SIGTERM on
preemption; schedulers and `launch/runner.stop` send SIGTERM. The handler only sets a flag: the loop polls it at
step boundaries, writes the rows in flight, saves a checkpoint at the current step and returns status
'incomplete' without a summary; `testbed train` then exits with REQUEUE_EXIT, and the same command resumes.

Nothing here imports jax (launch/runner.py reads REQUEUE_EXIT).
"""

from __future__ import annotations

import signal
import threading

REQUEUE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, checkpointed, resumable; not a failure
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequest:
    """A flag set by the stop signals while installed (a context manager); callable as `should_stop()`."""

    def __init__(self, also: object = None):
        self.signal: int | None = None
        self._also = also  # an extra should_stop() callable, polled alongside the signals
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal is not None or bool(self._also is not None and self._also())

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set from the main thread
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "a stop request"
