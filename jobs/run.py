"""What every job run is given, so the dispatcher and the reaper have one shape.

A job is built from a RunContext (plus its own clients) and has `run() -> int`, the exit
code; `python3 -m jobs <job>` only builds the context and picks the job by name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from jobs.beads import BeadStore
from jobs.lock import DispatchLock
from jobs.log import Clock, EventLog
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
    settings: JobSettings
    store: BeadStore
    lock: DispatchLock
    clock: Clock
    log: EventLog
    dry_run: bool = False
    stop: StopSignal = field(default_factory=StopSignal)
