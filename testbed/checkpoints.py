"""Checkpoints of a run directory (orbax): the manager, restore with fallback, read-only access for branching.

The training loop (testbed.loop), packs and branching (testbed.branch) all go through here, so a checkpoint is
saved, kept, restored and given up on the same way everywhere:
  - `open_manager` keeps the latest `train.keep_checkpoints` steps plus every `train.checkpoint_steps` step (a WSD
    parent's branch points) and drops half-written saves of a killed run;
  - `restore_latest` restores the newest step that reads; newer unreadable ones are moved aside (with a warning)
    so the run resumes from the one before;
  - `settle` lets an in-flight asynchronous save commit (or fail) before the process exits on an error;
  - `storage_failure` is the one-line error for a full or failing disk.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import jax

from testbed import faults, sharding
from testbed.config import Config
from testbed.runstore import STORAGE_MESSAGES, RunDir, RunDirError, StorageError


def open_manager(run: RunDir, cfg: Config):
    """The run's orbax CheckpointManager (created on first save)."""
    import orbax.checkpoint as ocp

    keep = cfg.train.checkpoint_steps  # e.g. a WSD parent's branch points: never deleted
    policy = ocp.checkpoint_managers
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=None if keep else cfg.train.keep_checkpoints, create=True,
        preservation_policy=policy.AnyPreservationPolicy([policy.LatestN(cfg.train.keep_checkpoints),
                                                          policy.CustomSteps(keep)]) if keep else None,
        cleanup_tmp_directories=True)  # drop half-written saves of a killed run
    return ocp.CheckpointManager(run.checkpoint_dir.absolute(), options=opts)


def save(mngr, step: int, state) -> None:
    """An asynchronous save of `state` at `step` (committed by orbax with an atomic rename)."""
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.StandardSave(state))


def _restore_step(mngr, step: int, like):
    """`like`'s structure, shapes, dtypes and shardings, read from step `step`."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_latest(run: RunDir, cfg: Config, state, log: Callable[[str], None]):
    """(checkpoint manager, state, step) from the newest checkpoint that restores. A newer one that cannot be read
    (truncated, corrupted) is moved to checkpoints_unreadable/ with a warning, so the run resumes from the one
    before it and saves that step again. When none restores, nothing is moved: the error lists the steps and
    how to start over."""
    quiet_closed_loop_callbacks()  # a failing orbax write or read would print one traceback per pending callback
    mngr = open_manager(run, cfg)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return mngr, state, 0
    faults.point("restore")
    bad: list[tuple[int, str]] = []
    for step in steps:
        try:
            restored = _restore_step(mngr, step, state)
        except Exception as e:  # orbax/tensorstore raise ValueError, OSError, KeyError, ... for a broken step
            first = str(e).splitlines()[0][:300] if str(e) else ""
            bad.append((int(step), f"{type(e).__name__}: {first}"))
            quiet_closed_loop_callbacks()
            mngr.close()
            mngr = open_manager(run, cfg)  # a failed restore can leave the manager's handlers confused
            continue
        if bad:
            if sharding.is_primary():
                _move_aside(run, bad, step, log)
            mngr.close()
            mngr = open_manager(run, cfg)  # sees the steps as they now are, so step s+... are saved again
        return mngr, restored, int(step)
    listing = "; ".join(f"step {s}: {why}" for s, why in bad)
    hint = (" (every step holds a train state of another structure: checkpoints written by another testbed "
            "version, whose optimizer state differs, resume only with that version)"
            if all("tree structures do not match" in why for _, why in bad) else "")
    raise RunDirError(f"{run.checkpoint_dir}: no checkpoint can be restored ({listing}){hint}; move the checkpoints "
                      "directory aside to start the run from step 0, or restore it from a backup")


def _move_aside(run: RunDir, bad: list[tuple[int, str]], good: int, log: Callable[[str], None]) -> None:
    aside = run.path / "checkpoints_unreadable"
    aside.mkdir(exist_ok=True)
    for s, why in bad:
        dest = aside / f"{s}.{time.strftime('%Y%m%d-%H%M%S')}"
        (run.checkpoint_dir / str(s)).rename(dest)
        log(f"WARNING: {run.checkpoint_dir / str(s)}: checkpoint cannot be restored ({why}); moved to "
            f"{dest}; resuming from the previous checkpoint (step {good})")


def _reader(run: RunDir):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(run.checkpoint_dir.absolute(), options=opts)


def saved_steps(run: RunDir) -> list[int]:
    """The steps another run's directory holds checkpoints of (read-only)."""
    mngr = _reader(run)
    try:
        return sorted(int(s) for s in mngr.all_steps())
    finally:
        mngr.close()


def read_step(run: RunDir, step: int, like):
    """Another run's checkpoint at `step` (read-only), restored onto `like`'s shapes and shardings."""
    mngr = _reader(run)
    try:
        return _restore_step(mngr, step, like)
    finally:
        mngr.close()


def settle(managers: list) -> None:
    """After the loop raised: let an in-flight asynchronous checkpoint commit (or fail cleanly) before the process
    exits, instead of being cut off at interpreter shutdown; its own error, if any, is not the one to report."""
    for mngr in managers:
        try:
            mngr.wait_until_finished()
        except Exception:
            pass
        try:
            mngr.close()
        except Exception:
            pass
    managers.clear()


def storage_failure(where: str, e: BaseException) -> StorageError:
    """The one-line error for a full or failing disk: what happened, and that the same command resumes. orbax's
    background writers fail the same way; their leftover futures' errors are not repeated at exit. `where` names
    the run directories ('--out RUN_DIR' for one run)."""
    quiet_closed_loop_callbacks()
    why = e.strerror if isinstance(e, OSError) and e.strerror else next(
        (m for m in STORAGE_MESSAGES if m in str(e)), "storage error")
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return StorageError(f"{where}: {why} while writing the run directory ({first}); free disk space there "
                        "(or pass an --out on another disk) and run the same command again: it resumes from the last "
                        "checkpoint (no summary was written: the run is not counted as finished)")


class _QuietHook:
    """sys.unraisablehook that drops tensorstore's 'Event loop is closed' noise and passes the rest on."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        self.previous(unraisable)


class _OrphanedOrbaxErrors(logging.Filter):
    """Drops asyncio's reports of errors nobody awaited: after a failed restore, orbax's other pending reads of the
    same broken step fail too, and at garbage collection asyncio logs each one ('Task exception was never
    retrieved' + a traceback), after the one-line warning that already said which step is unreadable."""

    NOISE = ("Task exception was never retrieved", "Future exception was never retrieved", "Event loop is closed")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        return not any(n in text for n in self.NOISE)


def quiet_closed_loop_callbacks() -> None:
    """After a failed orbax restore or save, tensorstore's pending callbacks hit a closed asyncio loop and Python
    prints one 'Event loop is closed' traceback per callback, and asyncio logs the failed reads nobody awaited:
    that noise alone is dropped (other unraisables and asyncio errors are not). Installed once per process."""
    if not isinstance(sys.unraisablehook, _QuietHook):
        sys.unraisablehook = _QuietHook(sys.unraisablehook)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrphanedOrbaxErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrphanedOrbaxErrors())

