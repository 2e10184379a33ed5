"""One reaper run: agent beads stuck in_progress are blocked, abandoned claims requeued.

Nothing changes without the dispatch lock of its assignee. Holding it, the reaper knows no
live dispatcher of that assignee is between claiming a bead and sending it, so a bead still
at stage `claimed` by one of them belongs to a dispatcher that is gone: it goes back to the
queue at once, whatever the clocks say. A claim made for another assignee (the bead was
re-assigned mid-hand-off) is outside its lock: never requeued, blocked after the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobs import notes
from jobs.beads import BdError, BdRejected, BdTooLarge, Bead
from jobs.lock import LockError, ensure_held
from jobs.protocol import CLAIMED_FOR_KEY, STAGE_KEY, Outcome, ReapAction, Stage, Status
from jobs.rowsize import ROW_LIMIT
from jobs.run import Job, RunContext, Tally, finish, log_fault

# A dispatcher holds the lock for one poll's claims and sends (seconds; at most a few HTTP
# timeouts); waiting this long for it costs the reaper nothing and saves a run.
LOCK_WAIT_SECONDS = 30.0


@dataclass
class ReapTally(Tally):
    in_progress: int = 0
    due: int = 0
    requeued: list[str] = field(default_factory=list)


def idle_minutes(bead: Bead, now: datetime) -> int:
    return int((now - bead.last_activity).total_seconds() // 60)


class Reaper(Job):
    """One reaper run: `Reaper(context).run()` -> exit code."""

    def __init__(
        self, context: RunContext, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS
    ) -> None:
        super().__init__(context)
        self.lock_wait_seconds = lock_wait_seconds
        self.threshold = timedelta(minutes=self.settings.reaper_threshold_minutes)
        self.tally = ReapTally()

    def run(self) -> int:
        try:
            self.tally.outcomes.add(self._tick())
        except (BdError, LockError) as exc:
            self.tally.errors += 1
            self.tally.outcomes.add(log_fault(self.log, exc))
        if self.tally.errors and not self.tally.outcomes & {Outcome.LOCK_LOST, Outcome.ERROR}:
            # A bd failure on one bead: the run went on, but it did not go well.
            self.tally.outcomes.add(Outcome.ERROR)
        return finish(
            self.context,
            self.tally.outcome,
            run_failed=bool(self.tally.errors),
            in_progress=self.tally.in_progress,
            stale=self.tally.due,
            blocked=self.tally.blocked,
            requeued=self.tally.requeued,
            skipped=self.tally.skipped,
            errors=self.tally.errors,
        )

    def _tick(self) -> Outcome:
        working = self.store.queue(self.settings.agent_assignee, Status.IN_PROGRESS)
        for bead_id, reason in working.unreadable.items():
            self._skip(bead_id, f"bd printed it in a shape we cannot read: {reason}")
        now = self.clock()
        # updated_at alone may only *over*state idleness (comments do not bump it): a bead
        # that looks fresh here is fresh; one that looks stale is re-read with its comments.
        due = [bead for bead in working.beads if self._worth_a_look(bead, now)]
        self.tally.in_progress, self.tally.due = len(working.beads), len(due)
        self.log.event("queue.read", in_progress=len(working.beads), due=[b.id for b in due])
        if not due:
            return Outcome.NOTHING_DUE if working.beads else Outcome.QUEUE_EMPTY
        if self.dry_run:
            for bead in due:
                self._reap_one(bead.id, dry_run=True)
            return Outcome.DRY_RUN
        if not self.lock.try_acquire() and not self._wait_for_lock():
            self.log.event(
                "lock.busy",
                lock=self.lock.description,
                waited_seconds=self.lock_wait_seconds,
                detail="a dispatcher is mid-hand-off; the next reaper run looks again",
            )
            return Outcome.LOCK_BUSY
        self.log.event("lock.acquired", lock=self.lock.description)
        try:
            for bead in due:
                if self.stop.requested:
                    self.log.event("run.stopping", detail="SIGTERM: left the rest for the next run")
                    return Outcome.STOPPED
                self._reap_one(bead.id)
        finally:
            self.lock.release()
            self.log.event("lock.released", lock=self.lock.description)
        reaped = self.tally.blocked or self.tally.requeued
        return Outcome.REAPED if reaped else Outcome.NOTHING_DUE

    def _wait_for_lock(self) -> bool:
        self.log.event(
            "lock.waiting", lock=self.lock.description, up_to_seconds=self.lock_wait_seconds
        )
        return self.lock.try_acquire(self.lock_wait_seconds)

    def _worth_a_look(self, bead: Bead, now: datetime) -> bool:
        claimed = bead.metadata.get(STAGE_KEY) == Stage.CLAIMED and self._claim_is_ours(bead)
        return claimed or now - bead.updated_at > self.threshold

    def _action(self, bead: Bead, now: datetime) -> ReapAction | None:
        if bead.status != Status.IN_PROGRESS or bead.assignee != self.settings.agent_assignee:
            return None
        if bead.metadata.get(STAGE_KEY) == Stage.CLAIMED and self._claim_is_ours(bead):
            return ReapAction.REQUEUE
        if now - bead.last_activity > self.threshold:
            return ReapAction.BLOCK
        return None

    def _claim_is_ours(self, bead: Bead) -> bool:
        """Claimed by a dispatcher of this assignee, so under the lock this run holds. A
        claim without the mark predates instances, when one lock covered the database."""
        own = self.settings.agent_assignee
        return bool(bead.metadata.get(CLAIMED_FOR_KEY, own) == own)

    def _reap_one(self, bead_id: str, *, dry_run: bool = False) -> None:
        """Re-read one bead and act on it; a dry run decides the same way and writes nothing."""
        if not dry_run:
            ensure_held(self.lock)
        try:
            # Fresh, with comments: the agent may have shown progress since the query.
            current = self.store.show(bead_id)
        except BdError as exc:
            self._skip(bead_id, f"cannot re-read it: {exc}")
            return
        now = self.clock()
        action = self._action(current, now)
        if action is None:
            self.log.event("reap.skipped", bead=bead_id, detail="changed since the query")
            return
        if dry_run:
            self.log.event("dry_run.would_reap", bead=bead_id, action=action)
            return
        if self._write(current, action, now):
            self._report(current, action, now)

    def _write(self, current: Bead, action: ReapAction, now: datetime) -> bool:
        """The reaper's one write on a bead; False when bd did not take it (logged)."""
        if current.stored_bytes > ROW_LIMIT:
            self._too_large(current, action, f"{current.stored_bytes:,} bytes of {ROW_LIMIT:,}")
            return False
        ensure_held(self.lock)
        try:
            if action == ReapAction.REQUEUE:
                self.store.update(
                    current.id,
                    status=Status.OPEN,
                    note=notes.requeued_unsent(current.updated_at, now),
                    unset_metadata=[STAGE_KEY, CLAIMED_FOR_KEY],
                )
            else:
                self._block(current, now)
        except BdRejected as exc:
            self.log.event("reap.skipped", bead=current.id, detail=str(exc))
            return False
        except BdTooLarge as exc:
            self._too_large(current, action, str(exc))
            return False
        except BdError as exc:
            # A fault of bd on this bead: an error line, then the rest of the run goes on.
            self.log.error("reap.failed", bead=current.id, action=action, error=str(exc))
            self.tally.errors += 1
            self._skip(current.id, f"cannot update it: {exc}", quiet=True)
            return False
        return True

    def _report(self, current: Bead, action: ReapAction, now: datetime) -> None:
        bead_id = current.id
        minutes = idle_minutes(current, now)
        if action == ReapAction.REQUEUE:
            self.tally.requeued.append(bead_id)
            self.log.event("reap.requeued", bead=bead_id, detail="claimed, never sent")
        else:
            self.tally.blocked.append(bead_id)
            self.log.event(
                "reap.blocked",
                bead=bead_id,
                idle_minutes=minutes,
                threshold_minutes=self.settings.reaper_threshold_minutes,
                stage=current.metadata.get(STAGE_KEY),
            )

    def _block(self, bead: Bead, now: datetime) -> None:
        minutes = idle_minutes(bead, now)
        unknown = bead.metadata.get(STAGE_KEY) == Stage.SENDING
        note = (notes.reaped_unknown_outcome if unknown else notes.reaped)(
            minutes, self.settings.reaper_threshold_minutes, now
        )
        self.store.update(
            bead.id,
            status=Status.BLOCKED,
            note=note,
            unset_metadata=[k for k in (STAGE_KEY, CLAIMED_FOR_KEY) if k in bead.metadata],
        )

    def _too_large(self, bead: Bead, action: ReapAction, detail: str) -> None:
        """bd refuses every update of this bead, now and on every later run: one warning,
        no failed run (docs/runbook.md, "Too large": a human closes or trims it)."""
        self.log.warning(
            "reap.too_large",
            bead=bead.id,
            action=action,
            size=bead.stored_bytes,
            limit=ROW_LIMIT,
            detail=f"too large for bd to update ({detail}); `bd close {bead.id}` still works",
        )
        self._skip(bead.id, "too large for bd to update", quiet=True)

    def _skip(self, bead_id: str, reason: str, *, quiet: bool = False) -> None:
        if bead_id in self.tally.skipped:
            return
        self.tally.skipped.append(bead_id)
        if not quiet:
            self.log.warning("bead.skipped", bead=bead_id, reason=reason, until="the next run")
