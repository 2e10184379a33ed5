"""The dispatcher run: one poll, or polls for a watch window.

A poll reads like the runbook: anything queued? (`bd query`) -> ready? (`bd ready`, bd's own
rule) -> (nothing? done) -> free slots? -> lock -> full read (ready again + query, unless the
change detector saw no write since the first) -> for the free slots' beads at once: claim ->
switch still on? -> mark sending -> POST each -> record each. Before all that, the change
detector (jobs/detect.py) says whether anything was written since bd last read: when nothing
was, an idle poll ends there (no bd process, no HTTP), and a poll whose beads waited for a
slot only asks for a free one. A read poll with an empty queue is one bd call and no HTTP
request; one whose beads all wait on bd's rules adds the `bd ready`. None touches the lock.

Eligible = what `bd ready` offers the assignee (open; no open blocker through blocks,
conditional-blocks or waits-for; not deferred; parent neither blocked nor deferred; not
pinned, ephemeral or of a bd-internal type), with non-blank acceptance criteria; attempts
are bounded because a bead that used them up is `blocked`. Best first: priority, then oldest.

The lock is held from the re-query until the last bead of the poll is recorded, so a reaper
that holds it knows no live dispatcher is between claiming a bead and sending it. A poll
claims only as many beads as the agent has free slots, in one bd call, marks them in another,
POSTs them in turn and records them after: a 409, an outage, SIGTERM or the kill switch hands
the ones not yet sent back at once, so no pile of claimed beads is ever left behind.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, assert_never

from pydantic import TypeAdapter, ValidationError

from jobs.beadboard import (
    AgentBusy,
    AgentLoad,
    AgentServiceError,
    BeadBoardError,
    Dispatched,
    DispatchFailed,
    DispatchOutcome,
    DispatchUnknown,
    ServiceDown,
    Unconfirmed,
)
from jobs.beads import BdError, BdRejected, BdTooLarge, Bead, Change, QueryResult
from jobs.detect import ChangeDetector, Look
from jobs.lock import LockError, LockLost, ensure_held
from jobs.log import EventLog
from jobs.notes import DISPATCHER, DispatcherNotes
from jobs.protocol import ATTEMPTS_KEY, CLAIMED_FOR_KEY, STAGE_KEY, Outcome, Stage, Status, worst
from jobs.rowsize import ROW_LIMIT, WRITE_MARGIN, too_large
from jobs.run import Job, RunContext, Tally, finish, log_fault
from jobs.settings import env_name


class Board(Protocol):
    def agent_busy(self) -> bool: ...
    def dispatch(self, bead_id: str) -> DispatchOutcome: ...


class LoadSource(Protocol):
    def load(self) -> AgentLoad: ...


ENABLED_ENV = env_name("dispatcher_enabled")
# After these, the next bead of the poll would only meet the same answer: the agent is full,
# the service is down (the lock goes at once), or the kill switch went off.
_ENDS_THE_POLL = frozenset({Outcome.AGENT_BUSY_ON_DISPATCH, Outcome.SERVICE_DOWN, Outcome.PAUSED})
_BOOL = TypeAdapter(bool)
# Written before a POST: after a crash, "sending" means "maybe sent", never resend.
_SENDING = Change(set_metadata={STAGE_KEY: Stage.SENDING}, unset_metadata=(CLAIMED_FOR_KEY,))


class RuntimeSwitch:
    """The kill switch as mounted from the runtime ConfigMap, re-read on every poll and
    before every POST.

    Falls back to the value the run started with when no directory is mounted.
    """

    def __init__(self, start_value: bool, directory: Path | None, log: EventLog) -> None:
        self._value = start_value
        self._directory = directory
        self._log = log

    def enabled(self) -> bool:
        if self._directory is None:
            return self._value
        path = self._directory / ENABLED_ENV
        try:
            # Parsed by the same rules as the env var the run started with.
            self._value = _BOOL.validate_python(path.read_text(encoding="utf-8").strip())
        except (OSError, ValidationError) as exc:
            self._log.warning("runtime.unreadable", path=str(path), error=str(exc))
        return self._value


@dataclass
class RunTally(Tally):
    polls: int = 0
    idle_polls: int = 0
    dispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # back to open, no attempt counted
    service_down: int = 0  # POSTs answered "service down"; each bead went back uncharged
    # Polls whose question "is a slot free?" (BeadBoard's status, the agent's /health) got
    # no usable answer; nothing was claimed.
    unanswered: int = 0
    polls_without_bd: int = 0  # the change detector saw no write since bd last read
    poll_seconds: list[float] = field(default_factory=list)
    quiet_poll_seconds: list[float] = field(default_factory=list)  # of polls without bd


class Backoff:
    """How long to wait after a poll that found the agent service down, or got no answer
    to whether a slot is free: 30 s, then twice the last wait, up to 300 s. A successful
    dispatch starts it over."""

    FIRST_SECONDS = 30.0
    MAX_SECONDS = 300.0

    def __init__(self) -> None:
        self.seconds: float | None = None

    def lengthen(self) -> float:
        last = self.seconds
        self.seconds = self.FIRST_SECONDS if last is None else min(2 * last, self.MAX_SECONDS)
        return self.seconds

    def reset(self) -> None:
        self.seconds = None


def _reopening(note: str) -> Change:
    """Back to `open`, stage and claim marker cleared, with the note saying why."""
    return Change(status=Status.OPEN, note=note, unset_metadata=(STAGE_KEY, CLAIMED_FOR_KEY))


def eligible_in_order(beads: list[Bead], assignee: str) -> list[Bead]:
    """Open agent beads with acceptance criteria, best first: priority 0 first, then oldest.

    None of bd's sort policies is this order: `--sort priority` puts the newest first within
    a priority, `oldest` ignores priority, and the default `hybrid` ranks beads older than
    48 h by age alone. A queue is served first come, first served within a priority.
    """
    keep = [bead for bead in beads if _is_eligible(bead, assignee)]
    return sorted(keep, key=lambda bead: (bead.priority, bead.created_at, bead.id))


def _without_acceptance(beads: list[Bead]) -> list[str]:
    return [b.id for b in beads if not b.has_acceptance_criteria]


def _is_eligible(bead: Bead, assignee: str) -> bool:
    return bead.status == Status.OPEN and bead.assignee == assignee and bead.has_acceptance_criteria


def _median_ms(seconds: list[float]) -> float | None:
    return round(1000 * statistics.median(seconds), 2) if seconds else None


def _p95_ms(seconds: list[float]) -> float | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(1000 * ordered[round(0.95 * (len(ordered) - 1))], 2)


def _max_ms(seconds: list[float]) -> float | None:
    return round(1000 * max(seconds), 2) if seconds else None


def _why_back_off(service_down: bool, unanswered: bool) -> str:
    """Why the next poll waits longer than the interval, or "" when it need not. Asking
    again every second would only add a failed request and an error line a second."""
    if service_down:
        return "agent service down"
    if unanswered:
        return "no answer to whether an agent slot is free"
    return ""


def attempts_so_far(bead: Bead) -> int:
    value = bead.metadata.get(ATTEMPTS_KEY, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        # A hand-edited count we cannot read restarts from zero rather than wedging the bead.
        return 0


class Dispatcher(Job):
    """One dispatcher run: `Dispatcher(context, board, ...).run()` -> exit code."""

    def __init__(
        self,
        context: RunContext,
        board: Board,
        *,
        load: LoadSource | None = None,
        switch: RuntimeSwitch | None = None,
        detector: ChangeDetector | None = None,
    ) -> None:
        super().__init__(context)
        self.board = board
        self.load = load
        self.switch = switch or RuntimeSwitch(self.settings.dispatcher_enabled, None, self.log)
        # Without a change signal every poll reads with bd.
        self.detector = detector or ChangeDetector(None, self.log, self.monotonic)
        self.notes = DispatcherNotes(self.settings.cronjob_name or DISPATCHER)
        self.tally = RunTally()
        self.backoff = Backoff()
        # Beads this run skips from now on, with why: a failed or refused (409) dispatch
        # waits for the next run, and a bead bd cannot read or write is logged once.
        self._skipped: dict[str, str] = {}
        # What the last bd read found ready to go out; until something is written, only a
        # freed agent slot can send one of them.
        self._waiting: list[Bead] = []
        # That read's answers (query, ready), for `queue.read` when they stand for the read
        # under the lock.
        self._last_read: tuple[QueryResult, QueryResult] | None = None

    # -- the run -----------------------------------------------------------------------

    def run(self) -> int:
        # Durations on the monotonic clock: a wall clock stepped by NTP or by hand must
        # neither stretch a window past its pod's deadline nor put a poll off for an hour.
        started = self.monotonic()
        while self._switched_on():
            poll_started = self.monotonic()
            downs, unanswered = self.tally.service_down, self.tally.unanswered
            sent = len(self.tally.dispatched)
            self._poll_safely()
            if self._run_is_over():
                break
            down = _why_back_off(
                self.tally.service_down > downs, self.tally.unanswered > unanswered
            )
            between = self._between_polls(bool(down), len(self.tally.dispatched) > sent)
            if not self._wait_for_next_poll(started, poll_started, between, down):
                break
        return self._finish()

    def _switched_on(self) -> bool:
        if self.switch.enabled():
            return True
        self.log.event("run.paused", detail=f"{ENABLED_ENV} is false")
        self.tally.outcomes.add(Outcome.PAUSED)
        return False

    def _run_is_over(self) -> bool:
        """What a poll can end the run with: a lost lock, the switch seen off, SIGTERM."""
        if Outcome.LOCK_LOST in self.tally.outcomes:
            return True  # whoever holds the lock now owns the queue; this run must not go on
        if Outcome.PAUSED in self.tally.outcomes:
            return True  # the kill switch went off mid-poll
        if self.stop.requested:
            self.log.event("run.stopping", detail="SIGTERM: finished the bead in hand")
            self.tally.outcomes.add(Outcome.STOPPED)
            return True
        return False

    def _wait_for_next_poll(
        self, started: float, poll_started: float, between: float, down: str
    ) -> bool:
        """Sleep until the next poll is due; False when the window has no room for it, or
        SIGTERM came meanwhile. `down`: why the wait is a back-off, or ""."""
        # Polls start every `between` seconds: time spent dispatching is not added on top.
        pause = between - (self.monotonic() - poll_started)
        remaining = self.settings.dispatcher_window_seconds - (self.monotonic() - started)
        if remaining < max(pause, 0.0) + 1.0:
            return False
        if down:
            self.log.event("run.backing_off", seconds=between, detail=down)
        if pause > 0 and self.stop.wait(pause):
            self.log.event("run.stopping", detail="SIGTERM while idle")
            self.tally.outcomes.add(Outcome.STOPPED)
            return False
        return True

    def _finish(self) -> int:
        return finish(
            self.context,
            self.tally.outcome,
            # A run that met the service down fails, so its Job shows it, though no bead did.
            run_failed=bool(self.tally.failed or self.tally.errors or self.tally.service_down),
            polls=self.tally.polls,
            idle_polls=self.tally.idle_polls,
            dispatched=self.tally.dispatched,
            failed=self.tally.failed,
            blocked=self.tally.blocked,
            requeued=self.tally.requeued,
            service_down=self.tally.service_down,
            unanswered=self.tally.unanswered,
            polls_without_bd=self.tally.polls_without_bd,
            change_signal=self.detector.kind,
            poll_ms_median=_median_ms(self.tally.poll_seconds),
            quiet_poll_ms_median=_median_ms(self.tally.quiet_poll_seconds),
            quiet_poll_ms_p95=_p95_ms(self.tally.quiet_poll_seconds),
            quiet_poll_ms_max=_max_ms(self.tally.quiet_poll_seconds),
            skipped=self.tally.skipped,
            errors=self.tally.errors,
        )

    def _between_polls(self, found_down: bool, dispatched: bool) -> float:
        """Seconds from one poll's start to the next: the interval, or longer after a poll
        that found the agent service down or unreachable, so an outage is not hammered
        every interval."""
        if dispatched:
            self.backoff.reset()
        interval = float(self.settings.poll_interval_seconds)
        return max(self.backoff.lengthen(), interval) if found_down else interval

    def _poll_safely(self) -> None:
        self.tally.polls += 1
        started, quiet = self.monotonic(), self.tally.polls_without_bd
        try:
            outcome = self.poll()
        except (BdError, BeadBoardError, AgentServiceError, LockError) as exc:
            self.tally.errors += 1
            if isinstance(exc, (BeadBoardError, AgentServiceError)):
                self.tally.unanswered += 1
            outcome = log_fault(self.log, exc)
        took = self.monotonic() - started
        self.tally.poll_seconds.append(took)
        if self.tally.polls_without_bd > quiet:
            self.tally.quiet_poll_seconds.append(took)
        if outcome == Outcome.QUEUE_EMPTY:
            self.tally.idle_polls += 1
        self.tally.outcomes.add(outcome)

    # -- one poll ----------------------------------------------------------------------

    def poll(self) -> Outcome:
        look = self.detector.look()
        if look.read:
            return self._send_from(self._read_and_remember(look))
        # Nothing written since bd last read: the beads that waited then still wait, and
        # only a freed slot can send one; asking costs one HTTP GET, not a bd process. An
        # agent still full was logged when bd read the queue, not once a second since.
        waiting = [b for b in self._waiting if b.id not in self._skipped]
        slots = self._free_slots(quiet=True) if waiting else 0
        if slots == 0:
            self.tally.polls_without_bd += 1
            return Outcome.AGENT_BUSY if waiting else Outcome.QUEUE_EMPTY
        return self._send_from(waiting, slots)

    def _send_from(self, candidates: list[Bead], slots: int | None = None) -> Outcome:
        """Free slots? -> lock -> the hand-off; `slots` when already asked."""
        if not candidates:
            return Outcome.QUEUE_EMPTY
        if slots is None:
            # Only now talk to BeadBoard / the agent: an empty queue leaves them free to
            # scale to zero.
            slots = self._free_slots()
        if slots == 0:
            self.log.event("agent.busy", waiting=len(candidates))
            return Outcome.AGENT_BUSY

        if self.dry_run:
            fresh = self._read_queue()  # what a real run would re-read under the lock
            chosen = [b.id for b in candidates if b.id in fresh][:slots]
            if not chosen:
                return Outcome.NOTHING_CLAIMABLE
            self.log.event("dry_run.would_dispatch", beads=chosen, bead=chosen[0], slots=slots)
            return Outcome.DRY_RUN

        if not self.lock.try_acquire():
            self.log.event("lock.busy", lock=self.lock.description)
            return Outcome.LOCK_BUSY
        self.log.event("lock.acquired", lock=self.lock.description)
        try:
            return self._hand_off(candidates, slots)
        finally:
            self.lock.release()
            self.log.event("lock.released", lock=self.lock.description)

    def _read_and_remember(self, look: Look) -> list[Bead]:
        """The first read, after which the detector compares with what `look` saw."""
        candidates = self._first_read()
        self.detector.seen(look)
        self._waiting = candidates
        return candidates

    def _first_read(self) -> list[Bead]:
        """What could go out now, best first: the poll's first read, without the lock.

        Today's one `bd query` for the assignee's open beads; only when one of them could go
        out (acceptance criteria, not skipped by this run) does `bd ready` say which bd lets
        start now (its dependency, deferral and hierarchy rules). `bd ready` computes the
        blocked set over the whole database, ~5x a query on 10,000 beads (`make bench`), so an
        empty queue never pays for it: an idle poll stays one bd query.
        """
        assignee = self.settings.agent_assignee
        queued = self.store.queue(assignee, Status.OPEN)
        self._skip_unreadable(queued.unreadable)
        wanted = [b for b in eligible_in_order(queued.beads, assignee) if b.id not in self._skipped]
        if not wanted:
            if self.tally.polls == 1:
                self.log.event(
                    "queue.read",
                    matched=len(queued.beads),
                    eligible=0,
                    skipped_no_acceptance=_without_acceptance(queued.beads),
                )
            return []
        ready = self.store.ready(assignee)
        self._skip_unreadable(ready.unreadable)
        self._last_read = (queued, ready)
        offered = {b.id for b in ready.beads}
        candidates = [b for b in wanted if b.id in offered]
        if not candidates and self.tally.polls == 1:
            # Everything waits on bd's rules: say so once a run, not once a poll.
            self._log_queue_read(queued, ready, eligible=0)
        return candidates

    def _read_queue(self) -> dict[str, Bead]:
        """The full read under the lock: the eligible beads bd still offers, as rows, by id.

        `bd ready` again (the first read's rule, now current), then one query for the rows
        (`bd ready` prints no metadata) instead of a `bd show` per bead. Logs `queue.read`
        with what waits and what bd holds back, by reason.
        """
        assignee = self.settings.agent_assignee
        ready = self.store.ready(assignee)
        queued = self.store.queue(assignee, Status.OPEN)
        self._skip_unreadable(queued.unreadable)
        offered = {b.id for b in ready.beads}
        fresh = {b.id: b for b in eligible_in_order(queued.beads, assignee) if b.id in offered}
        self._log_queue_read(queued, ready, eligible=len(fresh))
        return fresh

    def _current(self, candidates: list[Bead]) -> dict[str, Bead]:
        """The candidates as they are now, under the lock: as read, when the change signal
        says nothing was written since that read (bd would print the same), else read again.

        A deferral coming due without a write only adds ready beads, so an answer a few
        seconds old never offers one bd would now hold back.
        """
        if self.detector.unchanged_since_read() and self._last_read is not None:
            # What waits and what bd holds back, as the read under the lock would log it.
            self._log_queue_read(*self._last_read, eligible=len(candidates))
            self.log.event("queue.unchanged", signal=self.detector.kind, candidates=len(candidates))
            return {bead.id: bead for bead in candidates}
        return self._read_queue()

    def _log_queue_read(self, queued: QueryResult, ready: QueryResult, *, eligible: int) -> None:
        offered = {b.id for b in ready.beads}
        now = self.clock()
        waiting = [b for b in queued.beads if b.id not in offered]
        deferred = [b.id for b in waiting if b.deferred_at(now)]
        self.log.event(
            "queue.read",
            matched=len(queued.beads),
            ready=len(ready.beads),
            eligible=eligible,
            skipped_no_acceptance=_without_acceptance(queued.beads),
            held_back_deferred=deferred,
            held_back_dependencies=[b.id for b in waiting if b.id not in deferred],
        )

    def _free_slots(self, *, quiet: bool = False) -> int:
        if self.load is None:
            return 0 if self.board.agent_busy() else 1
        load = self.load.load()
        free = load.free_slots(self.settings.max_in_flight)
        if quiet and free == 0:
            return free
        self.log.event(
            "agent.load", active=load.active, queued=load.queued, capacity=load.capacity, free=free
        )
        return free

    def _hand_off(self, candidates: list[Bead], slots: int) -> Outcome:
        """Under the lock: the candidates as they are now, then as many as there are free
        slots at once (`_hand_off_batch`). A bead that did not go out (its claim refused, its
        send failed) leaves its slot to the next candidate, in another batch."""
        fresh = self._current(candidates)
        queue = iter(candidates)
        outcomes: list[Outcome] = []
        sent = 0
        while sent < slots:
            if self.stop.requested:
                outcomes.append(Outcome.STOPPED)
                break
            batch = self._next_batch(queue, fresh, slots - sent)
            if not batch:
                break
            done = self._hand_off_batch(batch)
            outcomes += done
            sent += sum(1 for o in done if o in (Outcome.DISPATCHED, Outcome.DISPATCH_UNKNOWN))
            if _ENDS_THE_POLL.intersection(done):
                break
        return worst(*outcomes) if outcomes else Outcome.NOTHING_CLAIMABLE

    def _next_batch(self, queue: Iterator[Bead], fresh: dict[str, Bead], room: int) -> list[Bead]:
        """The next `room` candidates that are still eligible and small enough for bd."""
        batch: list[Bead] = []
        for candidate in queue:
            current = fresh.get(candidate.id)
            if current is None or not _is_eligible(current, self.settings.agent_assignee):
                self.log.event("claim.skipped", bead=candidate.id, detail="changed since the query")
                continue
            if self._too_large(current, too_large(current.stored_bytes)):
                continue
            batch.append(current)
            if len(batch) == room:
                break
        return batch

    def _hand_off_batch(self, batch: list[Bead]) -> list[Outcome]:
        """claim -> (switch still on?) -> mark sending -> post each -> record each.

        The claims and the sending markers are one bd call each for the whole batch, and the
        records follow the last POST, so the k-th free slot of a poll waits for k POSTs, not
        for 4k bd processes. A batch is the poll's free slots: nothing is claimed that a slot
        does not wait for.
        """
        claimed = self._claim_all(batch)
        if not claimed:
            return []
        if not self.switch.enabled():
            return [self._stand_down(claimed)]
        marked = self._mark_all_sending(claimed)
        outcomes = [Outcome.ERROR] * (len(claimed) - len(marked))
        posted: list[tuple[Bead, DispatchOutcome]] = []
        try:
            outcomes += self._post_each(marked, posted)
        except LockLost as exc:
            self._record_without_lock(posted, marked[len(posted) + 1 :], exc)
            raise
        return [self._record(bead, outcome) for bead, outcome in posted] + outcomes

    def _claim_all(self, batch: list[Bead]) -> list[Bead]:
        """The batch's beads that are now claimed for this run, in order."""
        done = self._write_batch(batch, self._claim_change(), "claim")
        claimed = []
        for bead in batch:
            if bead.id in done:
                self.log.event("claim.done", bead=bead.id, priority=bead.priority)
                claimed.append(bead)
            elif self._claim(bead):
                claimed.append(bead)
        return claimed

    def _claim_change(self) -> Change:
        # --claim refuses a bead someone re-assigned since the read (bd's one real CAS).
        return Change(
            claim=True,
            status=Status.IN_PROGRESS,
            note=self.notes.claimed(self.clock()),
            set_metadata={STAGE_KEY: Stage.CLAIMED, CLAIMED_FOR_KEY: self.settings.agent_assignee},
            actor=self.settings.agent_assignee,
        )

    def _mark_all_sending(self, claimed: list[Bead]) -> list[Bead]:
        """The claimed beads now marked `sending`; each bd refused went back unsent."""
        done = self._write_batch(claimed, _SENDING, "mark")
        return [bead for bead in claimed if bead.id in done or self._mark_sending(bead)]

    def _write_batch(self, beads: list[Bead], change: Change, step: str) -> set[str]:
        """One bd call writes `change` to every bead of a batch of two or more: the ids bd
        confirms. The caller writes each of the others on its own, and that call says why
        bd skipped it; after a call that failed midway that is all of them, since each write
        here is safe to repeat (a claim of one's own bead is a no-op success)."""
        if len(beads) < 2:
            return set()
        ensure_held(self.lock)
        try:
            return self.store.update_many([bead.id for bead in beads], change)
        except BdError as exc:
            self.log.warning(f"{step}.batch_failed", beads=[b.id for b in beads], error=str(exc))
            return set()

    def _post_each(
        self, marked: list[Bead], posted: list[tuple[Bead, DispatchOutcome]]
    ) -> list[Outcome]:
        """POST each marked bead in turn onto `posted`. The switch and SIGTERM are read
        before each; when they say stop, or an answer says the next would meet the same
        (agent full, service down), the beads not yet sent go back to the queue."""
        for index, bead in enumerate(marked):
            rest = marked[index:]
            if index and self.stop.requested:
                self._hand_back_all(rest, "the run was stopped (SIGTERM) before sending it")
                return [Outcome.STOPPED]
            # The first bead's read was the one right after the claim.
            if index and not self.switch.enabled():
                return [self._stand_down(rest)]
            outcome = self._post(bead)
            posted.append((bead, outcome))
            if isinstance(outcome, AgentBusy | ServiceDown) and rest[1:]:
                why = (
                    f"the agent was full (409 for {bead.id})"
                    if isinstance(outcome, AgentBusy)
                    else f"the agent service was down (at the POST of {bead.id})"
                )
                self._hand_back_all(rest[1:], why)
                break
        return []

    def _record_without_lock(
        self, posted: list[tuple[Bead, DispatchOutcome]], unsent: list[Bead], lost: LockLost
    ) -> None:
        """The lock went mid-batch. Comments still say what happened (a comment cannot resend
        anything): for the beads POSTed, their answer; for those not sent, why. Their state is
        left to the lock's new holder (`sending`: never resent)."""
        for bead, outcome in posted:
            with contextlib.suppress(LockLost):
                self._record(bead, outcome)
        threshold = self.settings.reaper_threshold_minutes
        for bead in unsent:
            self._comment_best_effort(
                bead.id, self.notes.lost_lock(str(lost), threshold, self.clock())
            )

    def _hand_back_all(self, beads: list[Bead], reason: str) -> None:
        """Claimed beads not sent go back to the queue: one bd call for all (SIGTERM's grace
        period and the kill switch do not wait for one per bead), each bd skipped on its own."""
        reopen = _reopening(self.notes.not_sent(reason, self.clock()))
        done = self._write_batch(beads, reopen, "hand_back")
        for bead in beads:
            if bead.id in done:
                self.tally.requeued.append(bead.id)
                self.log.event("dispatch.not_sent", bead=bead.id, reason=reason)
                continue
            refused = self._hand_back(bead, reason)
            if refused is not None:
                self._bd_failed(bead.id, "hand_back", refused, handed_back=False)

    def _claim(self, bead: Bead) -> bool:
        ensure_held(self.lock)
        try:
            self.store.update(bead.id, **self._claim_change().as_update())
        except BdRejected as exc:
            self.log.event("claim.lost", bead=bead.id, reason=str(exc))
            return False
        except BdTooLarge as exc:
            # bd wrote nothing (it refuses the whole update), and would refuse a hand-back.
            self._too_large(bead, f"too large for bd to update ({exc})")
            return False
        except BdError as exc:
            # The write may have landed before bd failed: hand the bead back either way.
            returned = self._hand_back(bead, f"bd failed while claiming it ({exc})") is None
            self._bd_failed(bead.id, "claim", exc, handed_back=returned)
            return False
        self.log.event("claim.done", bead=bead.id, priority=bead.priority)
        return True

    def _too_large(self, bead: Bead, reason: str | None) -> bool:
        """A bead bd could not update once the jobs have written on it is never claimed:
        claimed, it would stay in_progress for good (docs/runbook.md, "Too large")."""
        if reason is None:
            return False
        self.log.warning(
            "bead.too_large",
            bead=bead.id,
            size=bead.stored_bytes,
            limit=ROW_LIMIT,
            margin=WRITE_MARGIN,
            reason=reason,
        )
        self._skip(bead.id, reason, quiet=True)  # once per run: skipped from now on
        return True

    def _hand_back(self, bead: Bead, reason: str) -> BdError | None:
        """A claimed bead that was never POSTed goes back to the queue, in this run.

        bd's error when it refused that too: the bead stays at stage `claimed`, and the
        reaper requeues it once it holds the lock. The caller reports the failure in one line.
        """
        try:
            self._reopen(bead, self.notes.not_sent(reason, self.clock()))
        except BdError as exc:
            return exc
        self.tally.requeued.append(bead.id)
        self.log.event("dispatch.not_sent", bead=bead.id, reason=reason)
        return None

    def _stand_down(self, beads: list[Bead]) -> Outcome:
        """The kill switch went off after the claim: the beads go back unsent, the run ends.

        Read again before every POST, so a flip mid-poll costs no further dispatch.
        """
        detail = f"{ENABLED_ENV} is false"
        self._hand_back_all(beads, f"the kill switch was turned off ({detail})")
        unsent = ", ".join(bead.id for bead in beads)
        self.log.event("run.paused", detail=f"{detail}: {unsent} went back unsent, run ends")
        self.tally.outcomes.add(Outcome.PAUSED)
        return Outcome.PAUSED

    def _mark_sending(self, bead: Bead) -> bool:
        """Written before the POST: after a crash, "sending" means "maybe sent", never resend.
        False when bd refused it: the bead went back (or waits for the reaper), unsent."""
        ensure_held(self.lock)
        try:
            self.store.update(bead.id, **_SENDING.as_update())
        except BdError as exc:
            returned = self._hand_back(bead, f"bd failed before the send ({exc})") is None
            self._bd_failed(bead.id, "mark_sending", exc, handed_back=returned)
            return False
        return True

    def _post(self, bead: Bead) -> DispatchOutcome:
        try:
            # A reaper that took the lock meanwhile may have requeued this bead: never POST it.
            ensure_held(self.lock)
        except LockLost as exc:
            note = self.notes.lost_lock(
                str(exc), self.settings.reaper_threshold_minutes, self.clock()
            )
            self._comment_best_effort(bead.id, note)
            raise
        return self.board.dispatch(bead.id)

    def _comment_best_effort(self, bead_id: str, text: str) -> None:
        try:
            self.store.comment(bead_id, text)
        except BdError as exc:
            self.log.error("comment.failed", bead=bead_id, error=str(exc))

    def _record(self, bead: Bead, outcome: DispatchOutcome) -> Outcome:
        try:
            return self._write_down(bead, outcome)
        except BdError as exc:
            # Sent (or maybe sent) but not recorded: stage stays `sending`, never resent.
            self._bd_failed(bead.id, "record", exc)
            return Outcome.ERROR

    def _write_down(self, bead: Bead, outcome: DispatchOutcome) -> Outcome:
        now = self.clock()
        match outcome:
            case Dispatched():
                return self._record_dispatched(bead, outcome, now)
            case DispatchUnknown():
                return self._record_unknown(bead, outcome, now)
            case AgentBusy():
                return self._record_agent_busy(bead, outcome, now)
            case ServiceDown():
                return self._record_service_down(bead, outcome, now)
            case DispatchFailed():
                return self._record_failure(bead, outcome, now)
            case _:
                assert_never(outcome)

    def _record_dispatched(self, bead: Bead, outcome: Dispatched, now: datetime) -> Outcome:
        self.tally.dispatched.append(bead.id)
        self.log.event(
            "dispatch.done", bead=bead.id, job_id=outcome.job_id, http=outcome.http_status
        )
        odd = outcome.unconfirmed
        if odd is None:
            record = self.notes.dispatched(outcome.job_id, outcome.http_status, now)
        else:
            self._flag_suspicious(bead.id, outcome.http_status, odd)
            record = self.notes.dispatched_unconfirmed(
                outcome.http_status, odd.body, odd.content_type, now
            )
        # A comment, not a note: the agent's first `bd note` may land at this very moment,
        # and --append-notes would rewrite the notes field from a read taken before it.
        self.store.comment(bead.id, record)
        ensure_held(self.lock)
        clear = [STAGE_KEY] + ([ATTEMPTS_KEY] if ATTEMPTS_KEY in bead.metadata else [])
        self.store.update(bead.id, unset_metadata=clear)  # metadata only: notes untouched
        return Outcome.DISPATCHED

    def _flag_suspicious(self, bead_id: str, http_status: int, odd: Unconfirmed) -> None:
        """A 2xx that is not BeadBoard's answer (a JSON object): something else may have said
        it. Taken as sent all the same (a resend risks double work), so a human is asked."""
        self.log.warning(
            "dispatch.suspicious",
            bead=bead_id,
            http=http_status,
            content_type=odd.content_type,
            body=odd.body,
            excerpt=odd.excerpt,
            detail="check BeadBoard's ingress",
        )

    def _record_unknown(self, bead: Bead, outcome: DispatchUnknown, now: datetime) -> Outcome:
        # Stays in_progress with stage=sending: the reaper's "outcome unknown" path.
        self.store.comment(
            bead.id,
            self.notes.dispatch_unknown(
                outcome.reason, self.settings.reaper_threshold_minutes, now
            ),
        )
        self.tally.failed.append(bead.id)
        self._skip(bead.id, "dispatch outcome unknown")
        self.log.error(
            "dispatch.unknown", bead=bead.id, reason=outcome.reason, bead_status=Status.IN_PROGRESS
        )
        return Outcome.DISPATCH_UNKNOWN

    def _reopen(self, bead: Bead, note: str) -> None:
        """Back to `open`, stage cleared, with the note saying why (under the lock)."""
        ensure_held(self.lock)
        self.store.update(bead.id, **_reopening(note).as_update())

    def _record_agent_busy(self, bead: Bead, outcome: AgentBusy, now: datetime) -> Outcome:
        self._reopen(bead, self.notes.agent_busy(outcome.detail, now))
        # Backed off for the rest of the run: one "agent busy" note per bead per run.
        self._skip(bead.id, "agent busy (409)", quiet=True)
        self.tally.requeued.append(bead.id)
        self.log.event("dispatch.agent_busy", bead=bead.id, detail=outcome.detail)
        return Outcome.AGENT_BUSY_ON_DISPATCH

    def _record_service_down(self, bead: Bead, outcome: ServiceDown, now: datetime) -> Outcome:
        # Not the bead's fault: it goes back uncharged, and is sent again once the service
        # answers (the run backs off meanwhile).
        self._reopen(bead, self.notes.service_down(outcome.reason, now))
        self.tally.service_down += 1
        if bead.id not in self.tally.requeued:
            self.tally.requeued.append(bead.id)
        self.log.error(
            "dispatch.service_down",
            bead=bead.id,
            reason=outcome.reason,
            bead_status=Status.OPEN,
            detail="no attempt counted; no further bead this poll",
        )
        return Outcome.SERVICE_DOWN

    def _record_failure(self, bead: Bead, outcome: DispatchFailed, now: datetime) -> Outcome:
        ensure_held(self.lock)
        attempt = attempts_so_far(bead) + 1
        limit = self.settings.max_dispatch_attempts
        note = self.notes.dispatch_failed(attempt, limit, outcome.reason, now)
        self._skip(bead.id, "dispatch failed", quiet=True)
        self.tally.failed.append(bead.id)
        if attempt >= limit:
            # The count is cleared so a human who reopens the bead gets a fresh set of attempts.
            self.store.update(
                bead.id, status=Status.BLOCKED, note=note, unset_metadata=[ATTEMPTS_KEY, STAGE_KEY]
            )
            status, result = Status.BLOCKED, Outcome.BLOCKED_AFTER_FAILURES
            self.tally.blocked.append(bead.id)
        else:
            self.store.update(
                bead.id,
                status=Status.OPEN,
                note=note,
                set_metadata={ATTEMPTS_KEY: str(attempt)},
                unset_metadata=[STAGE_KEY],
            )
            status, result = Status.OPEN, Outcome.DISPATCH_FAILED
        self.log.error(
            "dispatch.failed",
            bead=bead.id,
            attempt=attempt,
            limit=limit,
            reason=outcome.reason,
            bead_status=status,
        )
        return result

    # -- beads this run leaves alone --------------------------------------------------

    def _bd_failed(
        self, bead_id: str, step: str, exc: BdError, *, handed_back: bool | None = None
    ) -> None:
        """A fault of bd on one bead: one error line, and the bead waits for the next run."""
        fields = {} if handed_back is None else {"handed_back": handed_back}
        self.log.error("bead.failed", bead=bead_id, step=step, error=str(exc), **fields)
        self.tally.errors += 1
        self._skip(bead_id, f"bd failed at {step}: {exc}", quiet=True)

    def _skip(self, bead_id: str, reason: str, *, quiet: bool = False) -> None:
        """Left alone for the rest of the run; `quiet` when the caller's own line already
        said why (then not counted in `skipped`, which lists the `bead.skipped` warnings)."""
        if bead_id in self._skipped:
            return
        self._skipped[bead_id] = reason
        if not quiet:
            self.tally.skipped.append(bead_id)
            self.log.warning("bead.skipped", bead=bead_id, reason=reason, until="the next run")

    def _skip_unreadable(self, unreadable: dict[str, str]) -> None:
        for bead_id, reason in unreadable.items():
            self._skip(bead_id, f"bd printed it in a shape we cannot read: {reason}")
