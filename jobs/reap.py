"""One reaper run: agent beads stuck in_progress are blocked, abandoned claims requeued.

A run reads like the runbook: first read (`bd query` for the assignee's in_progress beads) ->
(nothing due? done) -> lock (waiting up to 30 s) -> for each due bead: re-read -> judge ->
act (requeue or block, with a note). A bead is due when it was claimed and never sent, or when
nothing on it moved for the threshold; the re-read (with its comments) has the last word.

Nothing changes without the dispatch lock of its assignee. Holding it, the reaper knows no
live dispatcher of that assignee is between claiming a bead and sending it, so a bead still
at stage `claimed` by one of them belongs to a dispatcher that is gone: it goes back to the
queue at once, whatever the clocks say. A claim made for another assignee (the bead was
re-assigned mid-hand-off) is outside its lock: never requeued, blocked after the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import assert_never

from jobs.beads import BdError, BdRejected, BdTooLarge, Bead
from jobs.lock import LockError, ensure_held
from jobs.notes import REAPER, ReaperNotes
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
        self.notes = ReaperNotes(self.settings.cronjob_name or REAPER)
        self.tally = ReapTally()

    # -- the run -----------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.tally.outcomes.add(self.tick())
        except (BdError, LockError) as exc:
            self.tally.errors += 1
            self.tally.outcomes.add(log_fault(self.log, exc))
        if self.tally.errors and not self.tally.outcomes & {Outcome.LOCK_LOST, Outcome.ERROR}:
            # A bd failure on one bead: the run went on, but it did not go well.
            self.tally.outcomes.add(Outcome.ERROR)
        return self._finish()

    def _finish(self) -> int:
        return finish(
            self.context,
            self.tally.outcome,
            run_failed=bool(self.tally.errors),
            in_progress=self.tally.in_progress,
            due=self.tally.due,
            blocked=self.tally.blocked,
            requeued=self.tally.requeued,
            skipped=self.tally.skipped,
            errors=self.tally.errors,
        )

    def tick(self) -> Outcome:
        due = self._first_read()
        if not due:
            return Outcome.NOTHING_DUE if self.tally.in_progress else Outcome.QUEUE_EMPTY
        if self.dry_run:
            for bead in due:
                self._reap_one(bead.id)
            return Outcome.DRY_RUN
        if not self._take_lock():
            return Outcome.LOCK_BUSY
        try:
            return self._reap_all(due)
        finally:
            self.lock.release()
            self.log.event("lock.released", lock=self.lock.description)

    def _first_read(self) -> list[Bead]:
        """The assignee's in_progress beads that are due, without the lock."""
        working = self.store.queue(self.settings.agent_assignee, Status.IN_PROGRESS)
        self._skip_unreadable(working.unreadable)
        now = self.clock()
        # updated_at alone may only *over*state idleness (comments do not bump it): a bead
        # that looks fresh here is fresh; one that looks stale is re-read with its comments.
        due = [bead for bead in working.beads if self._is_due(bead, now)]
        self.tally.in_progress, self.tally.due = len(working.beads), len(due)
        self.log.event("queue.read", in_progress=len(working.beads), due=[b.id for b in due])
        return due

    def _is_due(self, bead: Bead, now: datetime) -> bool:
        claimed = bead.metadata.get(STAGE_KEY) == Stage.CLAIMED and self._claim_is_ours(bead)
        return claimed or now - bead.updated_at > self.threshold

    def _take_lock(self) -> bool:
        """At once, or after waiting for a dispatcher to finish its hand-off."""
        if not self.lock.try_acquire():
            self.log.event(
                "lock.waiting", lock=self.lock.description, up_to_seconds=self.lock_wait_seconds
            )
            if not self.lock.try_acquire(self.lock_wait_seconds):
                self.log.event(
                    "lock.busy",
                    lock=self.lock.description,
                    waited_seconds=self.lock_wait_seconds,
                    detail="a dispatcher is mid-hand-off; the next reaper run looks again",
                )
                return False
        self.log.event("lock.acquired", lock=self.lock.description)
        return True

    def _reap_all(self, due: list[Bead]) -> Outcome:
        """Under the lock: each due bead in turn, until SIGTERM."""
        for bead in due:
            if self.stop.requested:
                self.log.event("run.stopping", detail="SIGTERM: left the rest for the next run")
                return Outcome.STOPPED
            self._reap_one(bead.id)
        reaped = self.tally.blocked or self.tally.requeued
        return Outcome.REAPED if reaped else Outcome.NOTHING_DUE

    # -- one bead ----------------------------------------------------------------------

    def _reap_one(self, bead_id: str) -> None:
        """re-read -> judge -> act. A dry run judges the same way and writes nothing."""
        if not self.dry_run:
            ensure_held(self.lock)
        current = self._reread(bead_id)
        if current is None:
            return
        now = self.clock()
        action = self._judge(current, now)
        if action is None:
            self.log.event("reap.skipped", bead=bead_id, detail="changed since the query")
            return
        if self.dry_run:
            self.log.event("dry_run.would_reap", bead=bead_id, action=action)
            return
        self._act(current, action, now)

    def _reread(self, bead_id: str) -> Bead | None:
        """Fresh, with comments: the agent may have shown progress since the query. None:
        bd could not show it (for any reason, so never taken as gone), and it is skipped."""
        try:
            return self.store.show(bead_id)
        except BdError as exc:
            self._skip(bead_id, f"cannot re-read it: {exc}")
            return None

    def _judge(self, bead: Bead, now: datetime) -> ReapAction | None:
        """What the reaper does to the bead as it is now; None: it changed since the query."""
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

    def _act(self, bead: Bead, action: ReapAction, now: datetime) -> None:
        """The reaper's one write on a bead; what bd does not take is logged, and the run
        goes on with the next bead."""
        if bead.stored_bytes > ROW_LIMIT:
            self._too_large(bead, action, f"{bead.stored_bytes:,} bytes of {ROW_LIMIT:,}")
            return
        ensure_held(self.lock)
        try:
            self._write_down(bead, action, now)
        except BdRejected as exc:
            self.log.event("reap.skipped", bead=bead.id, detail=str(exc))
        except BdTooLarge as exc:
            self._too_large(bead, action, str(exc))
        except BdError as exc:
            self._bd_failed(bead.id, action, exc)

    def _write_down(self, bead: Bead, action: ReapAction, now: datetime) -> None:
        match action:
            case ReapAction.REQUEUE:
                self._requeue(bead, now)
            case ReapAction.BLOCK:
                self._block(bead, now)
            case _:
                assert_never(action)

    def _requeue(self, bead: Bead, now: datetime) -> None:
        """Claimed by a dispatcher that no longer holds the lock, never sent: back to open,
        no attempt counted."""
        self.store.update(
            bead.id,
            status=Status.OPEN,
            note=self.notes.requeued_unsent(bead.updated_at, now),
            unset_metadata=[STAGE_KEY, CLAIMED_FOR_KEY],
        )
        self.tally.requeued.append(bead.id)
        self.log.event("reap.requeued", bead=bead.id, detail="claimed, never sent")

    def _block(self, bead: Bead, now: datetime) -> None:
        """No sign of life for the threshold: blocked, with a note saying whether BeadBoard
        may have started a job (stage `sending`)."""
        minutes = idle_minutes(bead, now)
        stage = bead.metadata.get(STAGE_KEY)
        note = (self.notes.reaped_unknown_outcome if stage == Stage.SENDING else self.notes.reaped)(
            minutes, self.settings.reaper_threshold_minutes, now
        )
        self.store.update(
            bead.id,
            status=Status.BLOCKED,
            note=note,
            unset_metadata=[k for k in (STAGE_KEY, CLAIMED_FOR_KEY) if k in bead.metadata],
        )
        self.tally.blocked.append(bead.id)
        self.log.event(
            "reap.blocked",
            bead=bead.id,
            idle_minutes=minutes,
            threshold_minutes=self.settings.reaper_threshold_minutes,
            stage=stage,
        )

    # -- beads this run leaves alone ---------------------------------------------------

    def _too_large(self, bead: Bead, action: ReapAction, cause: str) -> None:
        """bd refuses every update of this bead, now and on every later run: one warning,
        no failed run (docs/runbook.md, "Too large": a human closes or trims it)."""
        self.log.warning(
            "bead.too_large",
            bead=bead.id,
            action=action,
            size=bead.stored_bytes,
            limit=ROW_LIMIT,
            reason=f"too large for bd to update ({cause}); `bd close {bead.id}` still works",
        )
        self._skip(bead.id, "too large for bd to update", quiet=True)

    def _bd_failed(self, bead_id: str, step: ReapAction, exc: BdError) -> None:
        """A fault of bd on one bead: one error line, and the rest of the run goes on."""
        self.log.error("bead.failed", bead=bead_id, step=step, error=str(exc))
        self.tally.errors += 1
        self._skip(bead_id, f"bd failed at {step}: {exc}", quiet=True)

    def _skip(self, bead_id: str, reason: str, *, quiet: bool = False) -> None:
        """Left alone for the rest of the run, and counted in `skipped`; `quiet` when the
        caller's own line already said why."""
        if bead_id in self.tally.skipped:
            return
        self.tally.skipped.append(bead_id)
        if not quiet:
            self.log.warning("bead.skipped", bead=bead_id, reason=reason, until="the next run")

    def _skip_unreadable(self, unreadable: dict[str, str]) -> None:
        for bead_id, reason in unreadable.items():
            self._skip(bead_id, f"bd printed it in a shape we cannot read: {reason}")
