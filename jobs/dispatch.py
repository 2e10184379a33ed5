"""One dispatcher tick: query -> (nothing? exit) -> busy? -> lock -> claim -> dispatch -> note."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from jobs import lock, notes
from jobs.beadboard import (
    AgentBusy,
    BeadBoardError,
    Dispatched,
    DispatchFailed,
    DispatchOutcome,
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
from jobs.log import Clock, EventLog
from jobs.settings import Settings

# Failed attempts are counted on the bead itself, so the count survives pods.
ATTEMPTS_KEY = "auto_dispatch_attempts"

EXIT_OK = 0
EXIT_FAILED = 1


class Board(Protocol):
    def agent_busy(self) -> bool: ...
    def dispatch(self, bead_id: str) -> DispatchOutcome: ...


@dataclass
class DispatchTally:
    matched: int = 0
    eligible: int = 0
    skipped_no_acceptance: list[str] = field(default_factory=list)
    claimed: str | None = None
    outcome: str = "idle"


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
    # A holder needs a few bd calls; several bd timeouts without progress means it died.
    return timedelta(seconds=max(300.0, 4 * settings.bd_timeout_seconds))


def run_dispatch(
    settings: Settings,
    bd: BdClient,
    board: Board,
    clock: Clock,
    log: EventLog,
    run_id: str,
    dry_run: bool = False,
) -> int:
    tally = DispatchTally()
    try:
        code = _tick(settings, bd, board, clock, log, run_id, dry_run, tally)
    except (BdError, BeadBoardError) as exc:
        # A fault of the world: one log line, whatever bead state was reached stays consistent.
        log.error("tick.failed", error=str(exc), kind=type(exc).__name__, bead=tally.claimed)
        tally.outcome = "error"
        code = EXIT_FAILED
    log.event(
        "tick.done",
        outcome=tally.outcome,
        matched=tally.matched,
        eligible=tally.eligible,
        skipped_no_acceptance=len(tally.skipped_no_acceptance),
        claimed=tally.claimed,
        bd_calls=bd.counter.calls,
        dry_run=dry_run,
        exit_code=code,
    )
    return code


def _tick(
    settings: Settings,
    bd: BdClient,
    board: Board,
    clock: Clock,
    log: EventLog,
    run_id: str,
    dry_run: bool,
    tally: DispatchTally,
) -> int:
    assignee = settings.agent_assignee
    queue = bd.query(queue_expression(assignee, STATUS_OPEN))
    candidates = eligible_in_order(queue, assignee)
    tally.matched = len(queue)
    tally.eligible = len(candidates)
    tally.skipped_no_acceptance = [b.id for b in queue if not b.has_acceptance_criteria]
    log.event(
        "queue.read",
        matched=tally.matched,
        eligible=tally.eligible,
        skipped_no_acceptance=tally.skipped_no_acceptance,
    )
    if not candidates:
        tally.outcome = "queue_empty"
        return EXIT_OK

    # Only now talk to BeadBoard: an empty queue must leave it free to scale to zero.
    if board.agent_busy():
        log.event("agent.busy", waiting=tally.eligible)
        tally.outcome = "agent_busy"
        return EXIT_OK

    if dry_run:
        best = candidates[0]
        log.event("dry_run.would_dispatch", bead=best.id, priority=best.priority)
        tally.outcome = "dry_run"
        return EXIT_OK

    if not lock.acquire(bd, run_id, clock(), lock_stale_after(settings), log):
        tally.outcome = "lock_busy"
        return EXIT_OK
    try:
        bead = _claim_first(bd, candidates, assignee, clock, log)
    finally:
        lock.release(bd, run_id, log)
    if bead is None:
        tally.outcome = "nothing_claimable"
        return EXIT_OK
    tally.claimed = bead.id

    outcome = board.dispatch(bead.id)
    return _record_outcome(settings, bd, bead, outcome, clock, log, tally)


def _claim_first(
    bd: BdClient, candidates: list[Bead], assignee: str, clock: Clock, log: EventLog
) -> Bead | None:
    """Under the lock: re-read each candidate, move the first still-open one to in_progress."""
    for candidate in candidates:
        current = bd.show(candidate.id)
        if current is None or current.status != STATUS_OPEN or current.assignee != assignee:
            log.event(
                "claim.skipped",
                bead=candidate.id,
                status=None if current is None else current.status,
                assignee=None if current is None else current.assignee,
            )
            continue
        try:
            # --claim re-checks the assignee inside bd's own transaction.
            bd.update(
                current.id,
                claim=True,
                status=STATUS_IN_PROGRESS,
                note=notes.claimed(clock()),
                actor=assignee,
            )
        except BdRejected as exc:
            log.event("claim.lost", bead=current.id, reason=str(exc))
            continue
        log.event("claim.done", bead=current.id, priority=current.priority)
        return current
    return None


def _record_outcome(
    settings: Settings,
    bd: BdClient,
    bead: Bead,
    outcome: DispatchOutcome,
    clock: Clock,
    log: EventLog,
    tally: DispatchTally,
) -> int:
    prior_attempts = attempts_so_far(bead)
    if isinstance(outcome, Dispatched):
        bd.update(
            bead.id,
            note=notes.dispatched(outcome.job_id, clock()),
            unset_metadata=[ATTEMPTS_KEY] if ATTEMPTS_KEY in bead.metadata else [],
        )
        log.event("dispatch.done", bead=bead.id, job_id=outcome.job_id)
        tally.outcome = "dispatched"
        return EXIT_OK
    if isinstance(outcome, AgentBusy):
        bd.update(bead.id, status=STATUS_OPEN, note=notes.agent_busy(outcome.detail, clock()))
        log.event("dispatch.agent_busy", bead=bead.id, detail=outcome.detail)
        tally.outcome = "agent_busy_on_dispatch"
        return EXIT_OK
    assert isinstance(outcome, DispatchFailed)
    attempt = prior_attempts + 1
    limit = settings.dispatch_max_attempts
    note = notes.dispatch_failed(attempt, limit, outcome.reason, clock())
    if attempt >= limit:
        # The count is cleared so a human who reopens the bead gets a fresh set of attempts.
        bd.update(bead.id, status=STATUS_BLOCKED, note=note, unset_metadata=[ATTEMPTS_KEY])
        status, tally.outcome = STATUS_BLOCKED, "blocked_after_failures"
    else:
        bd.update(bead.id, status=STATUS_OPEN, note=note, set_metadata={ATTEMPTS_KEY: str(attempt)})
        status, tally.outcome = STATUS_OPEN, "dispatch_failed"
    log.error(
        "dispatch.failed",
        bead=bead.id,
        attempt=attempt,
        limit=limit,
        reason=outcome.reason,
        bead_status=status,
    )
    return EXIT_FAILED
