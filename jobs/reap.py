"""One reaper tick: block agent beads stuck in_progress with no update past the threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobs import notes
from jobs.beads import (
    STATUS_BLOCKED,
    STATUS_IN_PROGRESS,
    STATUS_OPEN,
    BdClient,
    BdError,
    BdRejected,
    Bead,
)
from jobs.dispatch import (
    EXIT_FAILED,
    EXIT_OK,
    STAGE_CLAIMED,
    STAGE_KEY,
    STAGE_SENDING,
    queue_expression,
)
from jobs.log import Clock, EventLog, peak_memory
from jobs.settings import Settings

# A live dispatcher moves a claimed bead on to "sending" within seconds (even with ten
# beads in hand); a bead still "claimed" this long after belongs to a dispatcher that died.
UNSENT_GRACE = timedelta(minutes=10)


@dataclass
class ReapTally:
    in_progress: int = 0
    stale: int = 0
    blocked: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
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
        requeued=tally.requeued,
        errors=tally.errors,
        bd_calls=bd.counter.calls,
        dry_run=dry_run,
        exit_code=code,
        **peak_memory(),
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
    due = [bead for bead in working if _action(bead, now, threshold) is not None]
    tally.in_progress, tally.stale = len(working), len(due)
    log.event("queue.read", in_progress=len(working), stale=[bead.id for bead in due])
    for bead in due:
        # Re-read first: the agent may have noted progress since the query.
        current = bd.show(bead.id)
        now = clock()
        action = None
        if (
            current is not None
            and current.status == STATUS_IN_PROGRESS
            and current.assignee == settings.agent_assignee
        ):
            action = _action(current, now, threshold)
        if current is None or action is None:
            log.event("reap.skipped", bead=bead.id, detail="changed since the query")
            continue
        minutes = idle_minutes(current, now)
        if dry_run:
            log.event(f"dry_run.would_{action}", bead=bead.id, idle_minutes=minutes)
            continue
        try:
            if action == "requeue":
                bd.update(
                    bead.id,
                    status=STATUS_OPEN,
                    note=notes.requeued_unsent(current.updated_at, now),
                    unset_metadata=[STAGE_KEY],
                )
            else:
                unknown = current.metadata.get(STAGE_KEY) == STAGE_SENDING
                note = (notes.reaped_unknown_outcome if unknown else notes.reaped)(
                    minutes, settings.reaper_threshold_minutes, now
                )
                bd.update(
                    bead.id,
                    status=STATUS_BLOCKED,
                    note=note,
                    unset_metadata=[STAGE_KEY] if STAGE_KEY in current.metadata else [],
                )
        except BdRejected as exc:
            log.event("reap.skipped", bead=bead.id, detail=str(exc))
            continue
        except BdError as exc:
            # One bead's failure must not keep the others stuck.
            log.error("reap.failed", bead=bead.id, error=str(exc))
            tally.errors += 1
            continue
        if action == "requeue":
            tally.requeued.append(bead.id)
            log.event(
                "reap.requeued", bead=bead.id, idle_minutes=minutes, detail="claimed, never sent"
            )
        else:
            tally.blocked.append(bead.id)
            log.event(
                "reap.blocked",
                bead=bead.id,
                idle_minutes=minutes,
                threshold_minutes=settings.reaper_threshold_minutes,
                stage=current.metadata.get(STAGE_KEY),
            )


def _action(bead: Bead, now: datetime, threshold: timedelta) -> str | None:
    """requeue: claimed by a dispatcher that died before sending; block: no progress."""
    if bead.metadata.get(STAGE_KEY) == STAGE_CLAIMED and now - bead.updated_at > UNSENT_GRACE:
        return "requeue"
    if is_stale(bead, now, threshold):
        return "block"
    return None
