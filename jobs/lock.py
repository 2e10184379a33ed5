"""A dispatch lock kept in bd itself, so two dispatchers never claim the same bead.

Why a lock bead: bd 1.0.2's `update --claim` only compares the *assignee*
(`WHERE assignee = ''`), and is a no-op success when the assignee already is
the actor. Beads handed to the agent are already assigned to the sentinel
`agent`, so claiming them proves nothing. The one real compare-and-swap bd
offers is "claim an unassigned bead", so the lock is an unassigned, closed
bead that each dispatcher claims under its own run-unique actor name. Closed
keeps it out of `bd ready` and `bd list`; claiming does not look at status.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from jobs import notes
from jobs.beads import STATUS_CLOSED, BdClient, BdError, BdRejected
from jobs.log import EventLog

LOCK_BEAD_ID = "autodispatch-lock"
LOCK_TITLE = "auto-dispatch lock (managed by the dispatcher; do not assign)"


def holder_name(run_id: str) -> str:
    return f"autodispatch-run-{run_id}"


def acquire(
    bd: BdClient,
    run_id: str,
    now: datetime,
    stale_after: timedelta,
    log: EventLog,
) -> bool:
    """True when this run holds the lock. Never waits: a busy lock ends the tick."""
    holder = holder_name(run_id)
    try:
        _claim(bd, holder)
        log.event("lock.acquired", lock=LOCK_BEAD_ID, holder=holder)
        return True
    except BdRejected:
        pass
    lock = bd.show(LOCK_BEAD_ID)
    if lock is None:
        # Whoever creates the lock does not use it in the same run: two first
        # runs racing to create it then cannot both believe they hold it.
        bd.create(
            LOCK_TITLE,
            bead_id=LOCK_BEAD_ID,
            issue_type="chore",
            priority=4,
            description="Serialises auto-dispatch claims. See docs/runbook.md.",
        )
        bd.update(LOCK_BEAD_ID, status=STATUS_CLOSED)
        log.event("lock.created", lock=LOCK_BEAD_ID, detail="dispatch starts next run")
        return False
    held_for = now - lock.updated_at
    if lock.assignee and held_for <= stale_after:
        log.event(
            "lock.busy",
            lock=LOCK_BEAD_ID,
            holder=lock.assignee,
            held_seconds=int(held_for.total_seconds()),
        )
        return False
    # The holder died mid-claim (or someone cleared the assignee by hand).
    bd.update(
        LOCK_BEAD_ID,
        assignee="",
        status=STATUS_CLOSED,
        note=notes.stale_lock_released(lock.assignee, lock.updated_at, now),
    )
    log.warning("lock.stale_released", lock=LOCK_BEAD_ID, holder=lock.assignee)
    try:
        _claim(bd, holder)
    except BdRejected:
        log.event("lock.busy", lock=LOCK_BEAD_ID, detail="taken right after the stale release")
        return False
    log.event("lock.acquired", lock=LOCK_BEAD_ID, holder=holder)
    return True


def _claim(bd: BdClient, holder: str) -> None:
    try:
        bd.update(LOCK_BEAD_ID, claim=True, actor=holder)
    except BdRejected:
        raise
    except BdError:
        # bd may have taken the lock and then failed (timeout, garbled output): if it is
        # ours, free it now rather than leave every dispatcher waiting for it to go stale.
        try:
            lock = bd.show(LOCK_BEAD_ID)
            if lock is not None and lock.assignee == holder:
                bd.update(LOCK_BEAD_ID, assignee="", status=STATUS_CLOSED)
        except BdError:
            pass  # the original error is the one worth reporting
        raise


def release(bd: BdClient, run_id: str, log: EventLog) -> None:
    bd.update(LOCK_BEAD_ID, assignee="", status=STATUS_CLOSED)
    log.event("lock.released", lock=LOCK_BEAD_ID, holder=holder_name(run_id))
