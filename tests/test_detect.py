"""The change detector: when an idle poll may skip bd, and the dispatcher's polls around it.

In-process, on the fake clock. `Contents` is the signal of the memory store: its rows as
text, so any write (the jobs', or a human's `store.add`/`edit`) moves it and a read does not,
which is what DOLT_HASHOF_DB and the embedded manifest do for the real database
(tests/integration/test_detect_real.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Hashable
from datetime import timedelta
from typing import Any

import pytest

from devtools.localservices.beadboard import HEALTH, BeadBoardStub, Reply
from jobs.detect import (
    SAFETY_READ_SECONDS,
    ChangeDetector,
    SignalMissed,
    SignalUnavailable,
    Why,
)
from jobs.log import EventLog
from tests.support.harness import NOW, FakeClock, FakeClockStop, JobHarness, events_named
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, STATUS

# 60 polls, one a second: the production preset's interval.
WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 1}


class Contents:
    kind = "contents"

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def value(self) -> Hashable:
        return json.dumps(self.store.rows, sort_keys=True)


class Scripted:
    """A signal that answers what the test says, or raises it."""

    kind = "scripted"

    def __init__(self, *answers: Hashable | Exception) -> None:
        self.answers = list(answers)

    def value(self) -> Hashable:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def detector(signal: Scripted, clock: FakeClock) -> tuple[ChangeDetector, io.StringIO]:
    stream = io.StringIO()
    return ChangeDetector(signal, EventLog("dispatch", "t", clock, stream), clock.monotonic), stream


def whys(found: ChangeDetector, clock: FakeClock, polls: int, seconds: float = 1.0) -> list[Why]:
    """Each poll looks, and bd reads (`seen`) whenever the detector says so."""
    out = []
    for _ in range(polls):
        look = found.look()
        if look.read:
            found.seen(look)
        out.append(look.why)
        clock.advance(seconds)
    return out


def test_bd_reads_on_the_first_look_and_after_each_change(clock: FakeClock) -> None:
    found, _ = detector(Scripted("a", "a", "a", "b", "b", "c"), clock)
    assert whys(found, clock, 6) == [
        Why.FIRST,
        Why.UNCHANGED,
        Why.UNCHANGED,
        Why.CHANGED,
        Why.UNCHANGED,
        Why.CHANGED,
    ]


def test_bd_reads_at_least_every_safety_interval_without_a_write(clock: FakeClock) -> None:
    found, _ = detector(Scripted(*["a"] * 4), clock)
    seconds = SAFETY_READ_SECONDS / 2
    assert whys(found, clock, 4, seconds) == [Why.FIRST, Why.UNCHANGED, Why.SAFETY, Why.UNCHANGED]


def test_a_read_that_failed_is_done_again_though_nothing_changed(clock: FakeClock) -> None:
    found, _ = detector(Scripted("a", "a", "a"), clock)
    assert found.look().why == Why.FIRST  # bd failed: no seen()
    look = found.look()
    assert look.why == Why.FIRST
    found.seen(look)
    assert found.look().why == Why.UNCHANGED


def test_an_unavailable_signal_reads_every_poll_and_says_so_once(clock: FakeClock) -> None:
    refused = SignalUnavailable("function: 'dolt_hashof_db' not found")
    found, stream = detector(Scripted(refused), clock)
    assert whys(found, clock, 5) == [Why.NO_SIGNAL] * 5
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["detector.unavailable"]
    assert lines[0]["error"] == "function: 'dolt_hashof_db' not found"


def test_a_missed_signal_reads_and_is_said_once_per_streak(clock: FakeClock) -> None:
    gone = SignalMissed("connection lost")
    found, stream = detector(Scripted(gone, gone, "a", "a", gone, "a"), clock)
    assert whys(found, clock, 6) == [
        Why.NO_SIGNAL,
        Why.NO_SIGNAL,
        Why.FIRST,
        Why.UNCHANGED,
        Why.NO_SIGNAL,
        Why.FIRST,
    ]
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["detector.missed", "detector.missed"]


# -- the dispatcher's polls --------------------------------------------------------------


def test_an_idle_window_runs_bd_once_and_asks_nobody(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add("a human's", assignee="alice")
    run = harness.dispatch(signal=Contents(store), **WINDOW)
    summary = run.summary
    assert (summary["polls"], summary["bd_calls"], summary["polls_without_bd"]) == (60, 1, 59)
    assert (summary["idle_polls"], summary["change_signal"]) == (60, "contents")
    assert beadboard.requests == []


def test_a_bead_assigned_mid_window_goes_out_on_the_next_poll(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    assigned: list[str] = []

    def between(wait: int) -> None:
        if wait == 20:
            assigned.append(store.add("assigned at 20 s"))

    run = harness.dispatch(signal=Contents(store), stop=FakeClockStop(clock, between), **WINDOW)
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == assigned
    assert store.bead(assigned[0]).status == "in_progress"
    # bd read at the first poll, at the write, and once after the dispatch's own writes.
    assert run.summary["polls_without_bd"] == 60 - 3


def test_a_deferral_coming_due_without_a_write_goes_out_within_the_safety_interval(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    due = NOW + timedelta(seconds=10)
    bead = store.add("deferred 10 s", defer_until=due)
    sent_at: list[float] = []

    def between(wait: int) -> None:
        if beadboard.requests_to(DISPATCH) and not sent_at:
            sent_at.append(clock.elapsed)

    harness.dispatch(
        signal=Contents(store),
        stop=FakeClockStop(clock, between),
        dispatcher_window_seconds=120,
        poll_interval_seconds=1,
    )
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [bead]
    # Seen by the safety read at 60 s, not when it came due at 10 s, and never later.
    assert sent_at == [SAFETY_READ_SECONDS]


def test_waiting_beads_ask_only_for_a_free_slot_until_one_frees(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    bead = store.add("waits for a slot")
    beadboard.health.capacity, beadboard.health.active = 1, 1

    def between(wait: int) -> None:
        if wait == 10:  # the agent's run ends without a write (say, it was killed)
            beadboard.health.active = 0

    run = harness.dispatch(
        signal=Contents(store),
        stop=FakeClockStop(clock, between),
        agent_health_url=f"{beadboard.url}/health",
        **WINDOW,
    )
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [bead]
    # Polls 2-10 asked /health only; poll 11 found the slot and, nothing written since the
    # first read, went straight to the claim under the lock: no bd read at all.
    assert len(beadboard.requests_to(HEALTH)) == 11
    assert store.methods()[:4] == ["queue", "ready", "update", "update"]
    assert len(events_named(run, "agent.load")) == 2  # a full agent logged once, at the read


def test_one_slot_mode_asks_the_busy_flag_only_while_a_bead_waits(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    store.add("waits")
    beadboard.program(STATUS, *[Reply(json={"busy": True})] * 5)

    run = harness.dispatch(signal=Contents(store), **WINDOW)
    assert len(beadboard.requests_to(DISPATCH)) == 1
    # Five busy answers, the sixth free: sent at poll 6; then idle, no HTTP, no bd.
    assert len(beadboard.requests_to(STATUS)) == 6
    assert run.summary["bd_calls"] < 12


def test_the_hand_off_claims_from_the_first_read_when_nothing_was_written_since(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add("ready")
    run = harness.dispatch(signal=Contents(store))
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [bead]
    assert store.methods() == ["queue", "ready", "update", "update", "comment", "update"]
    assert [e["candidates"] for e in events_named(run, "queue.unchanged")] == [1]
    # Said as the read under the lock said it: what waits, and what bd holds back.
    assert [e["eligible"] for e in events_named(run, "queue.read")] == [1]


@pytest.mark.parametrize(
    ("write", "dispatched"),
    [
        pytest.param({"assignee": "bob"}, False, id="re-assigned"),
        pytest.param({"status": "closed"}, False, id="closed"),
        pytest.param({"title": "retitled"}, True, id="retitled"),
    ],
)
def test_a_write_between_the_first_read_and_the_lock_is_read_again_under_it(
    harness: JobHarness,
    store: MemoryStore,
    beadboard: BeadBoardStub,
    write: dict[str, Any],
    dispatched: bool,
) -> None:
    bead = store.add("ready")
    # Lands after the first read's `bd ready`, before the lock: only a read under the lock
    # can know; the claim's own check would not stop a closed bead.
    store.after("ready", lambda: store.edit(bead, **write), nth=1)
    run = harness.dispatch(signal=Contents(store))
    assert store.methods()[:4] == ["queue", "ready", "ready", "queue"]
    assert events_named(run, "queue.unchanged") == []
    posted = [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)]
    assert posted == ([bead] if dispatched else [])


def test_a_signal_that_fails_under_the_lock_reads_again(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add("ready")
    run = harness.dispatch(signal=Scripted("v1", SignalMissed("connection dropped"), "v1"))
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [bead]
    assert store.methods()[:4] == ["queue", "ready", "ready", "queue"]
    assert events_named(run, "queue.unchanged") == []


@pytest.mark.parametrize("signal", [None, Scripted(SignalUnavailable("refused"))])
def test_without_a_signal_every_poll_reads_with_bd_as_before(
    harness: JobHarness, store: MemoryStore, signal: Scripted | None
) -> None:
    run = harness.dispatch(signal=signal, **WINDOW)
    assert (run.summary["polls"], run.summary["bd_calls"]) == (60, 60)
    assert run.summary["polls_without_bd"] == 0
    assert len(events_named(run, "detector.unavailable")) == (0 if signal is None else 1)
