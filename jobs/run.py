"""What every job run is given, so the dispatcher and the reaper have one shape.

A job is built from a RunContext (plus its own clients) and has `run() -> int`, the exit
code; `python3 -m jobs <job>` only builds the context and picks the job by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.beads import BeadStore
from jobs.lock import DispatchLock, LockLost
from jobs.log import Clock, EventLog, peak_memory
from jobs.protocol import ExitCode, Outcome, worst
from jobs.settings import JobSettings


class StopSignal:
    """Set by SIGTERM; sleeping between polls wakes at once when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


@dataclass(frozen=True)
class RunContext:
    """`clock` is wall time, for what is written down (notes, log stamps, bd's own dates);
    `monotonic` measures durations (windows, pauses), so a clock step cannot stretch or cut them."""

    settings: JobSettings
    store: BeadStore
    lock: DispatchLock
    clock: Clock
    log: EventLog
    dry_run: bool = False
    stop: StopSignal = field(default_factory=StopSignal)
    monotonic: Callable[[], float] = time.monotonic


class Job:
    """What both jobs take from their context; each adds its own clients and `run()`."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.settings = context.settings
        self.store = context.store
        self.lock = context.lock
        self.clock = context.clock
        self.monotonic = context.monotonic
        self.log = context.log
        self.stop = context.stop
        self.dry_run = context.dry_run


@dataclass
class Tally:
    """What a run did so far; each job's tally adds its own counts."""

    blocked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outcomes: set[Outcome] = field(default_factory=set)
    errors: int = 0

    @property
    def outcome(self) -> Outcome:
        return worst(*self.outcomes) if self.outcomes else Outcome.QUEUE_EMPTY


def log_fault(log: EventLog, exc: Exception) -> Outcome:
    """One error line for a fault that ends a poll or a run (see the runbook's log table)."""
    if isinstance(exc, LockLost):
        log.error("lock.lost", error=str(exc), detail="stopping; no further bead writes")
        return Outcome.LOCK_LOST
    # A fault of the world: bead states stay consistent, the next run looks again.
    log.error("tick.failed", error=str(exc), kind=type(exc).__name__)
    return Outcome.ERROR


def finish(context: RunContext, outcome: Outcome, *, run_failed: bool, **counts: Any) -> int:
    """The run's last line, `tick.done`, the same for every job; returns the exit code."""
    code = ExitCode.FAILED if run_failed else ExitCode.OK
    context.log.event(
        "tick.done",
        outcome=outcome,
        **counts,
        bd_calls=context.store.calls,
        dry_run=context.dry_run,
        exit_code=int(code),
        **peak_memory(),
    )
    return int(code)
