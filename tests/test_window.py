"""Watch windows on the fake clock: idle polls, draining one slot, every agent slot, the kill
switch re-read from the runtime dir between polls, and SIGTERM (`stop.request()`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from devtools.pods.process import JobRun
from jobs.log import iso_utc
from jobs.protocol import STAGE_KEY
from tests.support.harness import NOW, FakeClock, FakeClockStop, JobHarness, events_named, posted
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, HEALTH, STATUS

# Polls at 0, 10, ... 50 s: the last starts with less than one interval (+1 s) left.
WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 10}


def test_idle_window_polls_with_one_bd_call_and_no_http(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    store.add("a human's", assignee="alice")
    stop = FakeClockStop(clock)
    run = harness.dispatch(stop=stop, **WINDOW)
    assert run.code == 0
    summary = run.summary
    assert (summary["polls"], summary["idle_polls"], summary["bd_calls"]) == (6, 6, 6)
    assert summary["outcome"] == "queue_empty"
    assert store.methods() == ["queue"] * 6
    assert beadboard.requests == []
    # Five pauses of a whole interval each: nothing else took (fake) time.
    assert (stop.waits, clock.now - NOW) == (5, timedelta(seconds=50))
    # An idle poll logs nothing but the first one's queue read.
    assert [e["event"] for e in run.events] == ["queue.read", "tick.done"]


def test_window_zero_is_one_pass(harness: JobHarness, clock: FakeClock) -> None:
    stop = FakeClockStop(clock)
    run = harness.dispatch(stop=stop, dispatcher_window_seconds=0, poll_interval_seconds=1)
    assert run.summary["polls"] == 1
    assert stop.waits == 0


def test_single_slot_drains_the_queue_within_one_run(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    beads = [store.add(f"b{i}", priority=i) for i in range(3)]
    # One agent slot that frees 15 s after each dispatch, on the run's own clock.
    busy_until = [NOW]

    def status(request: RecordedRequest) -> Reply:
        return Reply(json={"busy": clock() < busy_until[0]})

    def dispatch(request: RecordedRequest) -> Reply:
        busy_until[0] = clock() + timedelta(seconds=15)
        return Reply(json={"job_id": f"job-{len(beadboard.requests_to(DISPATCH))}"})

    beadboard.set_handler(STATUS, status)
    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(**WINDOW)
    assert run.code == 0, run.stdout
    assert posted(beadboard) == beads
    assert run.summary["dispatched"] == beads
    # Dispatched at 0 s, 20 s and 40 s; the agent was busy at 10 s and 30 s.
    assert len(events_named(run, "agent.busy")) == 2
    assert all(store.bead(b).status == "in_progress" for b in beads)


def test_health_url_fills_every_free_slot_in_one_poll(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    beads = [store.add(f"b{i}", priority=(i * 3) % 5) for i in range(5)]
    beadboard.health.capacity = 10
    beadboard.health.active = 6  # four free slots
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert run.code == 0, run.stdout
    assert run.summary["polls"] == 1
    by_priority = sorted(beads, key=lambda bead: store.bead(bead).priority)
    assert posted(beadboard) == by_priority[:4]
    assert run.summary["dispatched"] == by_priority[:4]
    load = run.event("agent.load")
    assert (load["active"], load["capacity"], load["free"]) == (6, 10, 4)
    assert beadboard.requests_to(STATUS) == []
    # One lock hold for the whole poll.
    assert len(events_named(run, "lock.acquired")) == 1


def test_max_in_flight_caps_the_slots(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    for i in range(5):
        store.add(f"b{i}")
    beadboard.health.capacity = 10
    beadboard.health.active = 1
    run = harness.dispatch(agent_health_url=harness.health_url, max_in_flight=3)
    assert len(run.summary["dispatched"]) == 2
    assert run.event("agent.load")["free"] == 2


def test_no_free_slot_is_agent_busy_without_touching_the_lock(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    beadboard.health.capacity = 2
    beadboard.health.queued = 2
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert run.summary["outcome"] == "agent_busy"
    assert posted(beadboard) == []
    assert not harness.lock_path.exists()


def test_a_failed_bead_is_not_retried_within_the_same_window(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=400, json={"error": "x"}))
    run = harness.dispatch(**WINDOW)
    assert run.code == 1
    assert run.summary["polls"] == 6
    assert posted(beadboard) == [bead]
    assert store.bead(bead).status == "open"


@dataclass(frozen=True)
class PausedWindow:
    """A window paused through the runtime dir in its second pause, as the kubelet does when
    `pulumi up` changes the mounted ConfigMap; a bead is assigned at the same moment."""

    run: JobRun
    late: list[str]


@pytest.fixture
def paused_window(
    harness: JobHarness, store: MemoryStore, clock: FakeClock, tmp_path: Path
) -> PausedWindow:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    switch = runtime / "DISPATCHER_ENABLED"
    switch.write_text("true", encoding="utf-8")
    late: list[str] = []

    def between_polls(wait: int) -> None:
        if wait == 2:
            switch.write_text("false", encoding="utf-8")
            late.append(store.add("assigned after the pause"))

    run = harness.dispatch(
        stop=FakeClockStop(clock, between_polls), runtime_config_dir=runtime, **WINDOW
    )
    return PausedWindow(run, late)


def test_pause_reaches_a_running_window(paused_window: PausedWindow) -> None:
    assert (paused_window.run.code, paused_window.run.summary["polls"]) == (0, 2)
    assert paused_window.run.event("run.paused")["detail"] == "DISPATCHER_ENABLED is false"


def test_a_paused_window_ends_paused_not_idle(paused_window: PausedWindow) -> None:
    assert paused_window.run.summary["outcome"] == "paused"


def test_a_paused_window_leaves_a_new_bead_alone(
    paused_window: PausedWindow, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    assert store.bead(paused_window.late[0]).status == "open"
    assert posted(beadboard) == []


def test_a_paused_window_reads_bd_no_more(paused_window: PausedWindow, store: MemoryStore) -> None:
    assert store.methods() == ["queue", "queue"]


def test_an_unreadable_switch_keeps_the_last_value_and_says_so(
    harness: JobHarness, store: MemoryStore, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "DISPATCHER_ENABLED").write_text("maybe", encoding="utf-8")
    store.add()
    run = harness.dispatch(runtime_config_dir=runtime)
    assert run.summary["outcome"] == "dispatched"
    unreadable = run.event("runtime.unreadable")
    assert unreadable["level"] == "warning"
    assert unreadable["path"] == str(runtime / "DISPATCHER_ENABLED")


def test_sigterm_while_idle_stops_at_once(
    harness: JobHarness, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    def sigterm(wait: int) -> None:
        if wait == 3:
            stop.request()

    stop = FakeClockStop(clock, sigterm)
    run = harness.dispatch(stop=stop, **WINDOW)
    assert run.code == 0
    assert run.summary["polls"] == 3
    assert run.summary["outcome"] == "stopped"
    assert run.event("run.stopping")["detail"] == "SIGTERM while idle"
    assert run.events[-1]["event"] == "tick.done"
    # The third pause was cut short: the clock stands where SIGTERM found it.
    assert clock.now == NOW + timedelta(seconds=20)


@dataclass(frozen=True)
class StoppedMidPost:
    """Two beads, two free slots, and SIGTERM while the first bead's POST is in flight."""

    run: JobRun
    first: str
    second: str


@pytest.fixture
def stopped_mid_post(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> StoppedMidPost:
    first, second = store.add("first", priority=0), store.add("second", priority=1)
    beadboard.health.capacity = 2
    stop = FakeClockStop(clock)

    def dispatch(request: RecordedRequest) -> Reply:
        stop.request()
        return Reply(json={"job_id": "slow"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(stop=stop, agent_health_url=harness.health_url, **WINDOW)
    return StoppedMidPost(run, first, second)


def test_sigterm_mid_dispatch_ends_the_run_cleanly(stopped_mid_post: StoppedMidPost) -> None:
    run = stopped_mid_post.run
    assert run.code == 0, run.stdout
    assert (run.summary["dispatched"], run.summary["polls"]) == ([stopped_mid_post.first], 1)


def test_sigterm_mid_dispatch_says_it_finished_the_bead_in_hand(
    stopped_mid_post: StoppedMidPost,
) -> None:
    stopping = stopped_mid_post.run.event("run.stopping")
    assert stopping["detail"] == "SIGTERM: finished the bead in hand"


def test_sigterm_mid_dispatch_records_the_bead_in_hand(
    stopped_mid_post: StoppedMidPost, store: MemoryStore
) -> None:
    state = store.bead(stopped_mid_post.first)
    assert (state.status, STAGE_KEY in state.metadata) == ("in_progress", False)
    assert store.comments(stopped_mid_post.first)[-1].startswith("dispatched: job=slow")


def test_sigterm_mid_dispatch_posts_no_more(
    stopped_mid_post: StoppedMidPost, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == [stopped_mid_post.first]


def test_sigterm_mid_dispatch_hands_the_rest_of_the_batch_back_uncounted(
    stopped_mid_post: StoppedMidPost, store: MemoryStore
) -> None:
    # Claimed with the first (two free slots), not sent: back to open as it was, with why.
    state = store.bead(stopped_mid_post.second)
    assert (state.status, state.metadata) == ("open", {})
    assert store.notes(stopped_mid_post.second)[-1].startswith(
        "not dispatched: the run was stopped (SIGTERM) before sending it; back to open, "
        "not counted as a failed attempt"
    )
    assert stopped_mid_post.run.summary["requeued"] == [stopped_mid_post.second]


def test_polls_start_every_interval_however_long_a_poll_takes(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    store.add()
    # The POST takes 4 s of the run's clock: the pause after that poll is 6 s, not 10.
    beadboard.set_handler(DISPATCH, lambda request: slow_reply(clock, 4))
    pauses: list[datetime] = []
    stop = FakeClockStop(clock, lambda wait: pauses.append(clock()))
    run = harness.dispatch(stop=stop, **WINDOW)
    assert run.summary["polls"] == 6
    assert pauses[:2] == [NOW + timedelta(seconds=4), NOW + timedelta(seconds=10)]


def slow_reply(clock: FakeClock, seconds: float) -> Reply:
    clock.advance(seconds)
    return Reply(json={"job_id": "job-1"})


def in_the_second_poll(clock: FakeClock, store: MemoryStore, step: int) -> Callable[[], None]:
    store.after("ready", lambda: clock.step_wall(step), nth=2)
    return lambda: None


def in_the_second_pause(clock: FakeClock, store: MemoryStore, step: int) -> Callable[[], None]:
    return lambda: clock.step_wall(step)


@dataclass(frozen=True)
class Stepped:
    """A 60 s window whose wall clock is stepped by `step` seconds; a bead is assigned in the
    second pause."""

    run: JobRun
    stop: FakeClockStop
    step: int
    late: list[str]


@pytest.fixture(params=[-3600, 3600], ids=["wall-back-1h", "wall-forward-1h"])
def step(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@pytest.fixture(params=[in_the_second_poll, in_the_second_pause], ids=["poll", "pause"])
def stepped(
    request: pytest.FixtureRequest,
    harness: JobHarness,
    store: MemoryStore,
    clock: FakeClock,
    step: int,
) -> Stepped:
    in_the_pause = request.param(clock, store, step)
    late: list[str] = []

    def between_polls(wait: int) -> None:
        if wait == 2:
            in_the_pause()
            late.append(store.add("assigned after the step"))

    stop = FakeClockStop(clock, between_polls)
    return Stepped(harness.dispatch(stop=stop, **WINDOW), stop, step, late)


def test_a_wall_clock_step_neither_stops_nor_stretches_the_window(stepped: Stepped) -> None:
    """Windows and pauses run on the monotonic clock."""
    assert stepped.run.summary["polls"] == 6
    assert stepped.stop.asked == [10.0] * 5


def test_a_bead_assigned_after_a_wall_clock_step_is_sent(
    stepped: Stepped, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == stepped.late


def test_the_record_after_a_wall_clock_step_carries_the_wall_time(
    stepped: Stepped, store: MemoryStore
) -> None:
    # Sent at the third poll, 20 s into the window.
    sent_at = iso_utc(NOW + timedelta(seconds=20 + stepped.step))
    assert sent_at in store.comments(stepped.late[0])[-1]


@dataclass(frozen=True)
class SwitchedOff:
    """Five beads, ten free slots (one batch of five), and the kill switch turned off while
    the first POST is answered."""

    run: JobRun
    first: str
    others: list[str]  # claimed with the first, not sent when the switch was seen off


@pytest.fixture
def switched_off(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, tmp_path: Path
) -> SwitchedOff:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    switch = runtime / "DISPATCHER_ENABLED"
    switch.write_text("true", encoding="utf-8")
    first, *others = [store.add(f"b{i}", priority=i) for i in range(5)]
    beadboard.health.capacity = 10

    def dispatch(request: RecordedRequest) -> Reply:
        switch.write_text("false", encoding="utf-8")
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(
        agent_health_url=harness.health_url,
        max_in_flight=10,
        runtime_config_dir=runtime,
        **WINDOW,
    )
    return SwitchedOff(run, first, others)


def test_the_switch_is_read_before_every_post(
    switched_off: SwitchedOff, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == [switched_off.first]


def test_a_switch_turned_off_mid_run_ends_it_paused(switched_off: SwitchedOff) -> None:
    assert switched_off.run.code == 0
    assert switched_off.run.event("run.paused")["detail"].startswith("DISPATCHER_ENABLED is false")
    assert switched_off.run.summary["polls"] == 1


def test_beads_claimed_as_the_switch_turned_off_go_back_uncounted(
    switched_off: SwitchedOff, store: MemoryStore
) -> None:
    states = {bead: store.bead(bead) for bead in switched_off.others}
    assert {bead: (s.status, s.metadata) for bead, s in states.items()} == dict.fromkeys(
        switched_off.others, ("open", {})
    )
    assert switched_off.run.summary["requeued"] == switched_off.others


def test_beads_claimed_as_the_switch_turned_off_say_why(
    switched_off: SwitchedOff, store: MemoryStore
) -> None:
    for bead in switched_off.others:
        assert store.notes(bead)[-1].startswith(
            "not dispatched: the kill switch was turned off (DISPATCHER_ENABLED is false); "
            "back to open, not counted as a failed attempt"
        )


# -- BeadBoard or the agent service down: no bead is charged, and the run backs off --------

DOWN = Reply(status=502, json={"error": "agent service unreachable"})


@dataclass(frozen=True)
class Outage:
    """Every POST answers 502 for 10 minutes, then BeadBoard recovers; 150 s windows start
    every 3 minutes. Before, the third window blocked all six (attempt 3/3)."""

    codes: list[int]  # of each window's run
    beads: list[str]  # in line
    answers: list[tuple[str, bool]]  # (bead, taken) per POST


@pytest.fixture
def outage(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> Outage:
    beads = [store.add(f"b{i}", priority=i) for i in range(6)]
    recovered = NOW + timedelta(minutes=10)
    answers: list[tuple[str, bool]] = []

    def dispatch(request: RecordedRequest) -> Reply:
        taken = clock() >= recovered
        answers.append((request.json["taskId"], taken))
        return Reply(json={"job_id": f"job-{request.json['taskId']}"}) if taken else DOWN

    beadboard.set_handler(DISPATCH, dispatch)
    codes = []
    for minute in range(0, 18, 3):
        clock.advance((NOW + timedelta(minutes=minute) - clock.now).total_seconds())
        codes.append(harness.dispatch(dispatcher_window_seconds=150).code)
    return Outage(codes, beads, answers)


def test_an_outage_fails_the_runs_while_it_lasts(outage: Outage) -> None:
    assert outage.codes == [1, 1, 1, 1, 0, 0]


def test_an_outage_costs_one_post_a_poll_for_the_first_bead_in_line(outage: Outage) -> None:
    # 0, 30 and 90 s into each window; the fourth window's third poll, at 10m30s, found it up.
    assert [bead for bead, taken in outage.answers if not taken] == [outage.beads[0]] * 11


def test_every_bead_is_posted_once_the_outage_ends(outage: Outage) -> None:
    assert [bead for bead, taken in outage.answers if taken] == outage.beads


@pytest.mark.parametrize("which", range(6))
def test_every_bead_is_dispatched_once_the_outage_ends(
    outage: Outage, store: MemoryStore, which: int
) -> None:
    bead = outage.beads[which]
    [record] = store.comments(bead)
    assert record.startswith(f"dispatched: job=job-{bead} (beads-dispatcher, ")
    assert store.bead(bead).status == "in_progress"


@pytest.mark.parametrize("which", range(6))
def test_an_outage_costs_no_attempt(outage: Outage, store: MemoryStore, which: int) -> None:
    bead = outage.beads[which]
    assert store.bead(bead).metadata == {}
    assert [note for note in store.notes(bead) if note.startswith("dispatch failed")] == []


def test_each_post_in_an_outage_is_noted_on_the_bead(outage: Outage, store: MemoryStore) -> None:
    down_notes = [n for n in store.notes(outage.beads[0]) if n.startswith("not sent:")]
    assert len(down_notes) == 11
    assert down_notes[0] == (
        "not sent: agent service unavailable (HTTP 502 agent service unreachable); back to "
        f"open, no attempt counted (beads-dispatcher, {iso_utc(NOW)})"
    )


@dataclass(frozen=True)
class DownWindow:
    run: JobRun
    paused: list[tuple[int, bool]]  # (POSTs so far, lock free) in each pause


@pytest.fixture
def down_window(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> DownWindow:
    for i in range(3):
        store.add(f"b{i}")
    beadboard.health.capacity = 10
    beadboard.set_handler(DISPATCH, lambda request: DOWN)
    paused: list[tuple[int, bool]] = []

    def between_polls(wait: int) -> None:
        paused.append((len(posted(beadboard)), harness.lock_is_free()))

    run = harness.dispatch(
        stop=FakeClockStop(clock, between_polls),
        agent_health_url=harness.health_url,
        **WINDOW,
    )
    return DownWindow(run, paused)


def test_the_service_down_answer_ends_the_poll_and_frees_the_lock(down_window: DownWindow) -> None:
    # One POST, then the pause. Polls at 0 and 30 s; the next would be at 90 s, past the
    # 60 s window.
    assert down_window.paused == [(1, True)]


def test_the_service_down_answer_releases_the_lock_before_backing_off(
    down_window: DownWindow,
) -> None:
    kept = ("dispatch.service_down", "lock.released", "run.backing_off")
    assert [e["event"] for e in down_window.run.events if e["event"] in kept][:3] == list(kept)


def test_the_service_down_answer_is_an_error_line_with_the_bead_open(
    down_window: DownWindow,
) -> None:
    down = down_window.run.event("dispatch.service_down")
    assert (down["level"], down["reason"], down["bead_status"]) == (
        "error",
        "HTTP 502 agent service unreachable",
        "open",
    )


def test_a_window_the_service_was_down_in_exits_1(down_window: DownWindow) -> None:
    summary = down_window.run.summary
    assert (down_window.run.code, summary["outcome"], summary["service_down"]) == (
        1,
        "service_down",
        2,
    )


def test_the_backoff_doubles_to_five_minutes_and_a_dispatch_starts_it_over(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    store.add("first", priority=0)
    store.add("second", priority=1)
    recovered = NOW + timedelta(minutes=20)
    taken: list[str] = []

    def dispatch(request: RecordedRequest) -> Reply:
        if clock() < recovered or taken:
            return DOWN  # down for 20 minutes, up for one POST, then down again
        taken.append(request.json["taskId"])
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(dispatcher_window_seconds=1800, poll_interval_seconds=10)
    waits = [event["seconds"] for event in events_named(run, "run.backing_off")]
    assert waits == [30, 60, 120, 240, 300, 300, 300, 30, 60, 120]
    assert len(taken) == 1


def test_no_answer_on_a_free_slot_backs_off_instead_of_asking_every_poll(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    """One-slot mode, BeadBoard's status failing for 20 minutes: the window asks after 30,
    60, ... 300 s, not every 10 s, and sends the bead once BeadBoard answers again."""
    bead = store.add("waiting")
    answers_again = NOW + timedelta(minutes=20)

    def status(request: RecordedRequest) -> Reply:
        if clock() < answers_again:
            return Reply(status=503, json={"error": "scaling up"})
        return Reply(json={"busy": False})

    beadboard.set_handler(STATUS, status)
    run = harness.dispatch(dispatcher_window_seconds=1800, poll_interval_seconds=10)
    backoffs = events_named(run, "run.backing_off")
    assert [e["seconds"] for e in backoffs] == [30, 60, 120, 240, 300, 300, 300]
    assert {e["detail"] for e in backoffs} == {"no answer to whether an agent slot is free"}
    assert len(events_named(run, "tick.failed")) == run.summary["unanswered"] == 7
    assert len(beadboard.requests_to(STATUS)) == 8
    assert posted(beadboard) == [bead]
    assert run.summary["service_down"] == 0 and run.code == 1  # the errors still show


def test_the_agent_health_unreachable_backs_off_too(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add("waiting")
    # A gateway's answer without the counts: one the run cannot use.
    beadboard.set_handler(HEALTH, lambda request: Reply(status=502, json={"error": "bad gateway"}))
    run = harness.dispatch(
        agent_health_url=harness.health_url, dispatcher_window_seconds=600, poll_interval_seconds=1
    )
    assert [e["seconds"] for e in events_named(run, "run.backing_off")] == [30, 60, 120, 240]
    assert run.summary["unanswered"] == run.summary["polls"] == 5
    assert beadboard.requests_to(DISPATCH) == []
