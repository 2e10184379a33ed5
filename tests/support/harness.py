"""The dispatcher and the reaper run in this process, as `python3 -m jobs` would build them.

A memory store stands in for bd, a fake clock for time (waits between polls advance it, so a
watch window of minutes takes milliseconds), a real flock file is the dispatch lock, and the
real BeadBoard client gets the stub's answers in process (httpx.MockTransport), or over a
loopback socket when the test needs one (`over_sockets`). The event log is read back as JSON.
"""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from devtools.localservices.beadboard import BeadBoardStub
from devtools.pods.process import JobRun
from jobs.beadboard import AgentHealth, BeadBoard
from jobs.detect import ChangeDetector, ChangeSignal
from jobs.dispatch import Dispatcher, RuntimeSwitch
from jobs.lock import LOCK_FILE_NAME, DispatchLock, FileLock
from jobs.log import EventLog
from jobs.reap import Reaper
from jobs.run import RunContext, StopSignal
from jobs.settings import JobSettings
from tests.support.in_process import stub_transport
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, HEALTH

# Whole seconds, as bd stamps: a note's time can be asserted exactly.
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
# Over real sockets, the HTTP time limit, and how late a "late" reply comes: far enough
# apart that a loaded CI machine neither answers a prompt request past the limit nor a late
# one within it (at 0.3 s a prompt status GET once timed out under load).
LATE_TIMEOUT = 1.0
LATE_BY = 3.0


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def plain_http() -> httpx.HTTPTransport:
    """httpx's own transport, minus loading the CA bundle (~30 ms a client): the stub is http."""
    return httpx.HTTPTransport(verify=False)


def events_named(run: JobRun, name: str) -> list[dict[str, Any]]:
    return [event for event in run.events if event["event"] == name]


def posted(board: BeadBoardStub) -> list[str]:
    """The bead ids POSTed to BeadBoard, in order."""
    return [request.json["taskId"] for request in board.requests_to(DISPATCH)]


class FakeClock:
    """Wall time (`clock()`, `now`) and a monotonic clock (`monotonic()`), advancing together.

    `step_wall` moves the wall clock alone, as NTP or a human setting the time would.
    """

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start
        self.elapsed = 0.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.elapsed += seconds

    def step_wall(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeClockStop(StopSignal):
    """A stop signal whose waits pass on the fake clock instead of sleeping.

    `between_polls(n)` runs inside the n-th wait: where a test flips the kill switch, sends
    "SIGTERM" (`request()`), or changes the beads between two polls.
    """

    def __init__(
        self, clock: FakeClock, between_polls: Callable[[int], None] | None = None
    ) -> None:
        super().__init__()
        self.clock = clock
        self.between_polls = between_polls
        self.waits = 0
        self.asked: list[float] = []  # the seconds of each wait, as the run asked for them

    def wait(self, seconds: float) -> bool:
        self.waits += 1
        self.asked.append(seconds)
        if self.between_polls is not None:
            self.between_polls(self.waits)
        if not self.requested:
            self.clock.advance(seconds)
        return self.requested


@dataclass
class JobHarness:
    store: MemoryStore
    clock: FakeClock
    board: BeadBoardStub
    beads_dir: Path
    # HTTP timeout of the clients the harness builds; settings cannot go below 1 s.
    http_timeout: float = 2.0
    sockets: bool = False  # talk to the stub over loopback instead of in process

    @property
    def health_url(self) -> str:
        """The agent service's /health, as the stub serves it."""
        return f"{self.board.url}{HEALTH}"

    def over_sockets(self, http_timeout: float = LATE_TIMEOUT) -> None:
        """Real sockets and a short timeout: for replies that come late or never."""
        self.sockets = True
        self.http_timeout = http_timeout

    def transport(self, url: str) -> httpx.BaseTransport:
        """The stub in process for its own URLs; any other URL (a closed port) a real socket."""
        own = url.rstrip("/") == self.board.url or url.startswith(f"{self.board.url}/")
        if own and not self.sockets:
            return stub_transport(self.board)
        return plain_http()

    @property
    def lock_path(self) -> Path:
        return self.beads_dir / LOCK_FILE_NAME

    def lock(self) -> FileLock:
        """The dispatch lock as another run would open it: flock excludes it from ours."""
        return FileLock(self.lock_path)

    @contextlib.contextmanager
    def lock_held_elsewhere(self) -> Iterator[FileLock]:
        """The dispatch lock, held by this test as another live run would hold it."""
        lock = self.lock()
        assert lock.try_acquire(), "the dispatch lock was not free"
        try:
            yield lock
        finally:
            lock.release()

    def lock_is_free(self) -> bool:
        probe = self.lock()
        if not probe.try_acquire():
            return False
        probe.release()
        return True

    def settings(self, **overrides: Any) -> JobSettings:
        defaults: dict[str, Any] = {"beadboard_url": self.board.url, "beads_db": self.beads_dir}
        return JobSettings(**(defaults | overrides))

    def context(
        self,
        job: str,
        settings: JobSettings,
        stream: io.StringIO,
        *,
        dry_run: bool,
        stop: StopSignal | None,
        lock: DispatchLock | None,
    ) -> RunContext:
        log = EventLog(job, "test-run", self.clock, stream)
        return RunContext(
            settings,
            self.store,
            lock or self.lock(),
            self.clock,
            log,
            dry_run=dry_run,
            stop=stop or FakeClockStop(self.clock),
            monotonic=self.clock.monotonic,
        )

    def dispatch(
        self,
        *,
        dry_run: bool = False,
        stop: StopSignal | None = None,
        lock: DispatchLock | None = None,
        signal: ChangeSignal | None = None,
        **overrides: Any,
    ) -> JobRun:
        """One dispatcher run; `overrides` are JobSettings fields. Without a `signal` the
        change detector has nothing to watch: bd reads every poll."""
        settings = self.settings(**overrides)
        stream = io.StringIO()
        context = self.context("dispatch", settings, stream, dry_run=dry_run, stop=stop, lock=lock)
        # What jobs/__main__.py's run_dispatch builds, with the harness's HTTP timeout.
        switch = RuntimeSwitch(
            settings.dispatcher_enabled, settings.runtime_config_dir, context.log
        )
        detector = ChangeDetector(signal, context.log, self.clock.monotonic)
        health = None
        if settings.agent_health_url:
            health = AgentHealth(
                settings.agent_health_url,
                self.http_timeout,
                self.transport(settings.agent_health_url),
            )
        board_url = settings.beadboard_url
        try:
            with BeadBoard(board_url, self.http_timeout, self.transport(board_url)) as board:
                dispatcher = Dispatcher(
                    context, board, load=health, switch=switch, detector=detector
                )
                code = dispatcher.run()
        finally:
            if health is not None:
                health.close()
        return JobRun(code, stream.getvalue(), "")

    def reap(
        self,
        *,
        dry_run: bool = False,
        stop: StopSignal | None = None,
        lock: DispatchLock | None = None,
        lock_wait: float = 0.0,
        **overrides: Any,
    ) -> JobRun:
        """One reaper run; `overrides` are JobSettings fields."""
        stream = io.StringIO()
        context = self.context(
            "reap", self.settings(**overrides), stream, dry_run=dry_run, stop=stop, lock=lock
        )
        code = Reaper(context, lock_wait_seconds=lock_wait).run()
        return JobRun(code, stream.getvalue(), "")
