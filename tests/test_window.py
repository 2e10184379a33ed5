"""Watch windows on the fake clock: idle polls, draining one slot, every agent slot, the kill
switch re-read from the runtime dir between polls, and SIGTERM (`stop.request()`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from jobs.protocol import STAGE_KEY
from tests.support.harness import NOW, FakeClock, FakeClockStop, JobHarness, events_named
from tests.support.memory_store import MemoryStore

STATUS = "/api/agent-status"
DISPATCH = "/api/agent-dispatch"
# Polls at 0, 10, ... 50 s: the last starts with less than one interval (+1 s) left.
WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 10}


def posted(beadboard: BeadBoardStub) -> list[str]:
    return [request.json["taskId"] for request in beadboard.requests_to(DISPATCH)]


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
    assert store.methods() == ["ready"] * 6
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
    run = harness.dispatch(agent_health_url=f"{beadboard.url}/health")
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
    run = harness.dispatch(agent_health_url=f"{beadboard.url}/health", max_in_flight=3)
    assert len(run.summary["dispatched"]) == 2
    assert run.event("agent.load")["free"] == 2


def test_no_free_slot_is_agent_busy_without_touching_the_lock(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    beadboard.health.capacity = 2
    beadboard.health.queued = 2
    run = harness.dispatch(agent_health_url=f"{beadboard.url}/health")
    assert run.summary["outcome"] == "agent_busy"
    assert posted(beadboard) == []
    assert not harness.lock_path.exists()


def test_a_failed_bead_is_not_retried_within_the_same_window(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=500, json={"error": "x"}))
    run = harness.dispatch(**WINDOW)
    assert run.code == 1
    assert run.summary["polls"] == 6
    assert posted(beadboard) == [bead]
    assert store.bead(bead).status == "open"


def test_pause_reaches_a_running_window(
    harness: JobHarness,
    store: MemoryStore,
    beadboard: BeadBoardStub,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    switch = runtime / "DISPATCHER_ENABLED"
    switch.write_text("true", encoding="utf-8")
    late: list[str] = []

    def between_polls(wait: int) -> None:
        if wait == 2:
            # What the kubelet does when `pulumi up` changes the mounted ConfigMap.
            switch.write_text("false", encoding="utf-8")
            late.append(store.add("assigned after the pause"))

    run = harness.dispatch(
        stop=FakeClockStop(clock, between_polls), runtime_config_dir=runtime, **WINDOW
    )
    assert run.code == 0
    assert run.summary["polls"] == 2
    assert run.event("run.paused")["detail"] == "DISPATCHER_ENABLED is false"
    assert run.summary["outcome"] == "paused"  # not the idle polls before it
    assert store.bead(late[0]).status == "open"
    assert posted(beadboard) == []
    assert store.methods() == ["ready", "ready"]


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


def test_sigterm_mid_dispatch_finishes_the_bead_in_hand_and_claims_no_more(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, clock: FakeClock
) -> None:
    first, second = store.add("first", priority=0), store.add("second", priority=1)
    second_before = store.snapshot()[second]
    beadboard.health.capacity = 2
    stop = FakeClockStop(clock)

    def dispatch(request: RecordedRequest) -> Reply:
        stop.request()  # SIGTERM lands while the POST is in flight
        return Reply(json={"job_id": "slow"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(stop=stop, agent_health_url=f"{beadboard.url}/health", **WINDOW)
    assert run.code == 0, run.stdout
    assert posted(beadboard) == [first]
    state = store.bead(first)
    assert state.status == "in_progress"
    assert STAGE_KEY not in state.metadata
    assert store.comments(first)[-1].startswith("dispatched: job=slow")
    # One bead in hand at a time: the second was never claimed, so there is nothing to undo.
    assert store.snapshot()[second] == second_before
    assert run.event("run.stopping")["detail"] == "SIGTERM: finished the bead in hand"
    assert (run.summary["dispatched"], run.summary["polls"]) == ([first], 1)


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
