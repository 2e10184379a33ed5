"""The dispatcher run: one poll, or polls for a watch window.

A poll reads like the runbook: query -> (nothing? done) -> free slots? -> lock -> claim ->
mark sending -> POST -> note. Idle polls cost one bd call and no HTTP request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from jobs import lock, notes
from jobs.beadboard import (
    AgentBusy,
    AgentLoad,
    BeadBoardError,
    Dispatched,
    DispatchFailed,
    DispatchOutcome,
    DispatchUnknown,
)
from jobs.beads import (
    STATUS_BLOCKED,
    STATUS_IN_PROGRESS,
    STATUS_OPEN,
    BdClient,
    BdError,
    BdRejected,
    Bead,
)
from jobs.log import Clock, EventLog, peak_memory
from jobs.settings import AUTODISPATCH_ENABLED, Settings, parse_bool

# Failed attempts are counted on the bead itself, so the count survives pods.
ATTEMPTS_KEY = "auto_dispatch_attempts"
# Where a claimed bead is in its hand-off; lets the reaper tell "never sent" (safe to
# requeue) from "sent, outcome unknown" (must not be sent twice). Cleared once recorded.
STAGE_KEY = "auto_dispatch_stage"
STAGE_CLAIMED = "claimed"
STAGE_SENDING = "sending"

EXIT_OK = 0
EXIT_FAILED = 1

# Worst first: the run's summary outcome is the worst any poll reached.
OUTCOME_RANK = (
    "error",
    "blocked_after_failures",
    "dispatch_failed",
    "dispatch_unknown",
    "dispatched",
    "agent_busy_on_dispatch",
    "stopped",
    "lock_busy",
    "agent_busy",
    "dry_run",
    "nothing_claimable",
    "queue_empty",
    "paused",
)


class Board(Protocol):
    def agent_busy(self) -> bool: ...
    def dispatch(self, bead_id: str) -> DispatchOutcome: ...


class LoadSource(Protocol):
    def load(self) -> AgentLoad: ...


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


class RuntimeSwitch:
    """The kill switch as mounted from the runtime ConfigMap, re-read on every poll.

    Falls back to the value the run started with when no directory is mounted.
    """

    def __init__(self, start_value: bool, directory: Path | None, log: EventLog) -> None:
        self._value = start_value
        self._directory = directory
        self._log = log

    def enabled(self) -> bool:
        if self._directory is None:
            return self._value
        path = self._directory / AUTODISPATCH_ENABLED
        try:
            self._value = parse_bool(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._log.warning("runtime.unreadable", path=str(path), error=str(exc))
        return self._value


@dataclass
class RunTally:
    polls: int = 0
    idle_polls: int = 0
    dispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    outcomes: set[str] = field(default_factory=set)
    errors: int = 0

    @property
    def outcome(self) -> str:
        for name in OUTCOME_RANK:
            if name in self.outcomes:
                return name
        return "queue_empty"


def queue_expression(assignee: str, status: str) -> str:
    return f"assignee={assignee} AND status={status}"


def eligible_in_order(beads: list[Bead], assignee: str) -> list[Bead]:
    """Open agent beads with acceptance criteria, best first: priority 0 first, then oldest."""
    keep = [
        bead
        for bead in beads
        if bead.status == STATUS_OPEN and bead.assignee == assignee and bead.has_acceptance_criteria
    ]
    return sorted(keep, key=lambda bead: (bead.priority, bead.created_at, bead.id))


def attempts_so_far(bead: Bead) -> int:
    value = bead.metadata.get(ATTEMPTS_KEY, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        # A hand-edited count we cannot read restarts from zero rather than wedging the bead.
        return 0


def lock_stale_after(settings: Settings) -> timedelta:
    # A holder needs a few bd calls per bead; many bd timeouts without progress means it died.
    return timedelta(seconds=max(300.0, 4 * settings.bd_timeout_seconds))


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        bd: BdClient,
        board: Board,
        clock: Clock,
        log: EventLog,
        run_id: str,
        *,
        load: LoadSource | None = None,
        stop: StopSignal | None = None,
        switch: RuntimeSwitch | None = None,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.bd = bd
        self.board = board
        self.load = load
        self.clock = clock
        self.log = log
        self.run_id = run_id
        self.stop = stop or StopSignal()
        self.switch = switch or RuntimeSwitch(settings.enabled, None, log)
        self.dry_run = dry_run
        self.tally = RunTally()
        # A bead that failed in this run waits for the next run: no hammering within a window.
        self._failed_this_run: set[str] = set()

    # -- the run -----------------------------------------------------------------------

    def run(self) -> int:
        started = self.clock()
        window = timedelta(seconds=self.settings.dispatch_window_seconds)
        interval = self.settings.poll_interval_seconds
        while True:
            if not self.switch.enabled():
                self.log.event("run.paused", detail=f"{AUTODISPATCH_ENABLED} is false")
                self.tally.outcomes.add("paused")
                break
            poll_started = self.clock()
            self._poll_safely()
            if self.stop.requested:
                self.log.event("run.stopping", detail="SIGTERM: finished the bead in hand")
                self.tally.outcomes.add("stopped")
                break
            # Polls start every `interval` seconds: time spent dispatching is not added on top.
            pause = interval - (self.clock() - poll_started).total_seconds()
            remaining = window - (self.clock() - started)
            if remaining.total_seconds() < max(pause, 0.0) + 1.0:
                break
            if pause > 0 and self.stop.wait(pause):
                self.log.event("run.stopping", detail="SIGTERM while idle")
                self.tally.outcomes.add("stopped")
                break
        code = EXIT_FAILED if self.tally.failed or self.tally.errors else EXIT_OK
        self.log.event(
            "tick.done",
            outcome=self.tally.outcome,
            polls=self.tally.polls,
            idle_polls=self.tally.idle_polls,
            dispatched=self.tally.dispatched,
            failed=self.tally.failed,
            blocked=self.tally.blocked,
            returned_to_queue=self.tally.returned,
            errors=self.tally.errors,
            bd_calls=self.bd.counter.calls,
            dry_run=self.dry_run,
            exit_code=code,
            **peak_memory(),
        )
        return code

    def _poll_safely(self) -> None:
        self.tally.polls += 1
        try:
            outcome = self.poll()
        except (BdError, BeadBoardError) as exc:
            # A fault of the world: one log line; bead states stay consistent (see runbook).
            self.log.error("tick.failed", error=str(exc), kind=type(exc).__name__)
            self.tally.errors += 1
            outcome = "error"
        if outcome == "queue_empty":
            self.tally.idle_polls += 1
        self.tally.outcomes.add(outcome)

    # -- one poll ----------------------------------------------------------------------

    def poll(self) -> str:
        assignee = self.settings.agent_assignee
        queue = self.bd.query(queue_expression(assignee, STATUS_OPEN))
        candidates = [
            b for b in eligible_in_order(queue, assignee) if b.id not in self._failed_this_run
        ]
        if candidates or self.tally.polls == 1:
            self.log.event(
                "queue.read",
                matched=len(queue),
                eligible=len(candidates),
                skipped_no_acceptance=[b.id for b in queue if not b.has_acceptance_criteria],
            )
        if not candidates:
            return "queue_empty"

        # Only now talk to BeadBoard / the agent: an empty queue leaves them free to scale to zero.
        slots = self._free_slots()
        if slots == 0:
            self.log.event("agent.busy", waiting=len(candidates))
            return "agent_busy"

        if self.dry_run:
            chosen = [b.id for b in candidates[:slots]]
            self.log.event("dry_run.would_dispatch", beads=chosen, bead=chosen[0], slots=slots)
            return "dry_run"

        if not lock.acquire(
            self.bd, self.run_id, self.clock(), lock_stale_after(self.settings), self.log
        ):
            return "lock_busy"
        try:
            claimed = self._claim(candidates, slots)
        finally:
            lock.release(self.bd, self.run_id, self.log)
        if not claimed:
            return "nothing_claimable"
        return self._send_all(claimed)

    def _free_slots(self) -> int:
        if self.load is None:
            return 0 if self.board.agent_busy() else 1
        load = self.load.load()
        free = load.free_slots(self.settings.max_in_flight)
        self.log.event(
            "agent.load", active=load.active, queued=load.queued, capacity=load.capacity, free=free
        )
        return free

    def _claim(self, candidates: list[Bead], slots: int) -> list[Bead]:
        """Under the lock: re-read the queue once, move still-open candidates to in_progress."""
        assignee = self.settings.agent_assignee
        # One fresh query instead of a `bd show` per candidate: the lock makes it current.
        fresh = {b.id: b for b in self.bd.query(queue_expression(assignee, STATUS_OPEN))}
        claimed: list[Bead] = []
        for candidate in candidates:
            if len(claimed) == slots or self.stop.requested:
                break
            current = fresh.get(candidate.id)
            if current is None or current.status != STATUS_OPEN or current.assignee != assignee:
                self.log.event("claim.skipped", bead=candidate.id, detail="changed since the query")
                continue
            try:
                # --claim re-checks the assignee inside bd's own transaction.
                self.bd.update(
                    current.id,
                    claim=True,
                    status=STATUS_IN_PROGRESS,
                    note=notes.claimed(self.clock()),
                    set_metadata={STAGE_KEY: STAGE_CLAIMED},
                    actor=assignee,
                )
            except BdRejected as exc:
                self.log.event("claim.lost", bead=current.id, reason=str(exc))
                continue
            self.log.event("claim.done", bead=current.id, priority=current.priority)
            claimed.append(current)
        return claimed

    def _send_all(self, claimed: list[Bead]) -> str:
        worst = "dispatched"
        for index, bead in enumerate(claimed):
            if self.stop.requested:
                self._return_unsent(claimed[index:], "the dispatcher was asked to stop (SIGTERM)")
                return "stopped"
            outcome = self._send(bead)
            if outcome == "agent_busy_on_dispatch":
                self._return_unsent(claimed[index + 1 :], "the agent answered busy (409)")
                return outcome
            if OUTCOME_RANK.index(outcome) < OUTCOME_RANK.index(worst):
                worst = outcome
        return worst

    def _return_unsent(self, beads: list[Bead], reason: str) -> None:
        for bead in beads:
            self.bd.update(
                bead.id,
                status=STATUS_OPEN,
                note=notes.not_sent(reason, self.clock()),
                unset_metadata=[STAGE_KEY],
            )
            self.tally.returned.append(bead.id)
            self.log.event("dispatch.not_sent", bead=bead.id, reason=reason)

    def _send(self, bead: Bead) -> str:
        # Written before the POST: after a crash, "sending" means "maybe sent", never resend.
        self.bd.update(bead.id, set_metadata={STAGE_KEY: STAGE_SENDING})
        outcome = self.board.dispatch(bead.id)
        return self._record(bead, outcome)

    def _record(self, bead: Bead, outcome: DispatchOutcome) -> str:
        now = self.clock()
        if isinstance(outcome, Dispatched):
            clear = [STAGE_KEY] + ([ATTEMPTS_KEY] if ATTEMPTS_KEY in bead.metadata else [])
            self.bd.update(
                bead.id, note=notes.dispatched(outcome.job_id, now), unset_metadata=clear
            )
            self.tally.dispatched.append(bead.id)
            self.log.event("dispatch.done", bead=bead.id, job_id=outcome.job_id)
            return "dispatched"
        if isinstance(outcome, AgentBusy):
            self.bd.update(
                bead.id,
                status=STATUS_OPEN,
                note=notes.agent_busy(outcome.detail, now),
                unset_metadata=[STAGE_KEY],
            )
            self.tally.returned.append(bead.id)
            self.log.event("dispatch.agent_busy", bead=bead.id, detail=outcome.detail)
            return "agent_busy_on_dispatch"
        if isinstance(outcome, DispatchUnknown):
            # Stays in_progress with stage=sending: the reaper's "outcome unknown" path.
            self.bd.update(
                bead.id,
                note=notes.dispatch_unknown(
                    outcome.reason, self.settings.reaper_threshold_minutes, now
                ),
            )
            self.tally.failed.append(bead.id)
            self.log.error(
                "dispatch.unknown",
                bead=bead.id,
                reason=outcome.reason,
                bead_status=STATUS_IN_PROGRESS,
            )
            return "dispatch_unknown"
        assert isinstance(outcome, DispatchFailed)
        attempt = attempts_so_far(bead) + 1
        limit = self.settings.dispatch_max_attempts
        note = notes.dispatch_failed(attempt, limit, outcome.reason, now)
        self._failed_this_run.add(bead.id)
        self.tally.failed.append(bead.id)
        if attempt >= limit:
            # The count is cleared so a human who reopens the bead gets a fresh set of attempts.
            self.bd.update(
                bead.id, status=STATUS_BLOCKED, note=note, unset_metadata=[ATTEMPTS_KEY, STAGE_KEY]
            )
            status, result = STATUS_BLOCKED, "blocked_after_failures"
            self.tally.blocked.append(bead.id)
        else:
            self.bd.update(
                bead.id,
                status=STATUS_OPEN,
                note=note,
                set_metadata={ATTEMPTS_KEY: str(attempt)},
                unset_metadata=[STAGE_KEY],
            )
            status, result = STATUS_OPEN, "dispatch_failed"
        self.log.error(
            "dispatch.failed",
            bead=bead.id,
            attempt=attempt,
            limit=limit,
            reason=outcome.reason,
            bead_status=status,
        )
        return result
