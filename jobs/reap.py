"""One reaper tick: block agent beads stuck in_progress with no update past the threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobs import notes
from jobs.beads import STATUS_BLOCKED, STATUS_IN_PROGRESS, BdClient, BdError, BdRejected, Bead
from jobs.dispatch import EXIT_FAILED, EXIT_OK, queue_expression
from jobs.log import Clock, EventLog
from jobs.settings import Settings


@dataclass
class ReapTally:
    in_progress: int = 0
    stale: int = 0
    blocked: list[str] = field(default_factory=list)
    errors: int = 0


def is_stale(bead: Bead, now: datetime, threshold: timedelta) -> bool:
    return now - bead.updated_at > threshold


def idle_minutes(bead: Bead, now: datetime) -> int:
    return int((now - bead.updated_at).total_seconds() // 60)


def run_reap(
    settings: Settings,
    bd: BdClient,
    clock: Clock,
    log: EventLog,
    dry_run: bool = False,
) -> int:
    tally = ReapTally()
    try:
        _tick(settings, bd, clock, log, dry_run, tally)
    except BdError as exc:
        log.error("tick.failed", error=str(exc), kind=type(exc).__name__)
        tally.errors += 1
    code = EXIT_FAILED if tally.errors else EXIT_OK
    log.event(
        "tick.done",
        in_progress=tally.in_progress,
        stale=tally.stale,
        blocked=tally.blocked,
        errors=tally.errors,
        bd_calls=bd.counter.calls,
        dry_run=dry_run,
        exit_code=code,
    )
    return code


def _tick(
    settings: Settings,
    bd: BdClient,
    clock: Clock,
    log: EventLog,
    dry_run: bool,
    tally: ReapTally,
) -> None:
    threshold = timedelta(minutes=settings.reaper_threshold_minutes)
    working = bd.query(queue_expression(settings.agent_assignee, STATUS_IN_PROGRESS))
    now = clock()
    stale = [bead for bead in working if is_stale(bead, now, threshold)]
    tally.in_progress, tally.stale = len(working), len(stale)
    log.event("queue.read", in_progress=len(working), stale=[bead.id for bead in stale])
    for bead in stale:
        # Re-read first: the agent may have noted progress since the query.
        current = bd.show(bead.id)
        now = clock()
        if (
            current is None
            or current.status != STATUS_IN_PROGRESS
            or current.assignee != settings.agent_assignee
            or not is_stale(current, now, threshold)
        ):
            log.event("reap.skipped", bead=bead.id, detail="changed since the query")
            continue
        minutes = idle_minutes(current, now)
        if dry_run:
            log.event("dry_run.would_block", bead=bead.id, idle_minutes=minutes)
            continue
        try:
            bd.update(
                bead.id,
                status=STATUS_BLOCKED,
                note=notes.reaped(minutes, settings.reaper_threshold_minutes, now),
            )
        except BdRejected as exc:
            log.event("reap.skipped", bead=bead.id, detail=str(exc))
            continue
        except BdError as exc:
            # One bead's failure must not keep the others stuck.
            log.error("reap.failed", bead=bead.id, error=str(exc))
            tally.errors += 1
            continue
        tally.blocked.append(bead.id)
        log.event(
            "reap.blocked",
            bead=bead.id,
            idle_minutes=minutes,
            threshold_minutes=settings.reaper_threshold_minutes,
        )
