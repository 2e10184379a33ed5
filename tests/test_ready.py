"""Only what `bd ready` offers goes out: dependencies, deferral and hierarchy, in process.

The memory store models bd 1.0.2's rules (docs/bd-contract.md, "Ready"); the real-bd suite
holds it to the binary (tests/integration/test_ready_real.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub
from tests.support.harness import NOW, JobHarness, events_named, posted
from tests.support.memory_store import MemoryStore


@pytest.fixture
def slots(beadboard: BeadBoardStub, harness: JobHarness) -> dict[str, Any]:
    """Ten free agent slots: whatever bd offers goes out in one poll."""
    beadboard.health.capacity = 10
    return {"agent_health_url": harness.health_url, "max_in_flight": 10}


def close(store: MemoryStore, bead: str) -> None:
    store.edit(bead, status="closed")


def test_a_chain_goes_out_one_link_at_a_time(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, slots: dict[str, Any]
) -> None:
    a = store.add("A", priority=3)
    b = store.add("B", priority=1)
    c = store.add("C", priority=0)
    store.depend(b, a)
    store.depend(c, b)
    harness.dispatch(**slots)
    assert posted(beadboard) == [a]
    close(store, a)
    harness.dispatch(**slots)
    assert posted(beadboard) == [a, b]
    close(store, b)
    harness.dispatch(**slots)
    assert posted(beadboard) == [a, b, c]


@pytest.mark.parametrize("kind", ["blocks", "conditional-blocks"])
def test_an_open_blocker_holds_its_dependant_back(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, kind: str
) -> None:
    blocker = store.add("a human's", assignee="alice")
    waiting = store.add("waits")
    store.depend(waiting, blocker, kind)
    assert harness.dispatch().summary["outcome"] == "queue_empty"
    close(store, blocker)
    harness.dispatch()
    assert posted(beadboard) == [waiting]


def test_a_closed_blocker_holds_nothing_back(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    blocker = store.add("done", status="closed")
    bead = store.add("free")
    store.depend(bead, blocker)
    harness.dispatch()
    assert posted(beadboard) == [bead]


def test_waits_for_holds_back_until_the_spawners_children_are_done(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    spawner = store.add("spawner", assignee="alice", issue_type="epic")
    child = store.add("child", assignee="alice", parent=spawner)
    waiting = store.add("waits")
    store.depend(waiting, spawner, "waits-for")
    assert harness.dispatch().summary["outcome"] == "queue_empty"
    close(store, child)
    harness.dispatch()
    assert posted(beadboard) == [waiting]


def test_a_bead_deferred_to_later_waits_and_goes_once_its_time_has_come(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add("later", defer_until=NOW + timedelta(hours=2))
    assert harness.dispatch().summary["outcome"] == "queue_empty"
    harness.clock.advance(2 * 3600 + 1)
    harness.dispatch()
    assert posted(beadboard) == [bead]


def test_a_task_under_a_blocked_epic_waits_until_the_epic_is_unblocked(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    review = store.add("design review", assignee="alice", issue_type="epic")
    epic = store.add("build it", assignee="alice", issue_type="epic")
    store.depend(epic, review)
    task = store.add("task", parent=epic)
    assert harness.dispatch().summary["outcome"] == "queue_empty"
    close(store, review)
    harness.dispatch()
    assert posted(beadboard) == [task]


def test_a_task_under_a_deferred_parent_waits(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    epic = store.add("epic", assignee="alice", defer_until=NOW + timedelta(days=1))
    store.add("task", parent=epic)
    assert harness.dispatch().summary["outcome"] == "queue_empty"
    assert posted(beadboard) == []


@pytest.mark.parametrize("kind", ["message", "gate", "molecule"])
def test_bd_plumbing_types_are_never_offered(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, kind: str
) -> None:
    store.add("plumbing", issue_type=kind)
    assert harness.dispatch().summary["outcome"] == "queue_empty"


def test_a_poll_whose_beads_all_wait_is_two_reads_no_http_and_no_lock(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    blocker = store.add("a human's", assignee="alice")
    store.depend(store.add("waits"), blocker)
    store.add("later", defer_until=NOW + timedelta(hours=2))
    run = harness.dispatch()
    assert run.summary["outcome"] == "queue_empty"
    assert store.methods() == ["queue", "ready"]
    assert beadboard.requests == []
    assert not harness.lock_path.exists()


def test_bd_ready_is_not_asked_when_nothing_queued_could_go_out(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    """bd ready computes the blocked set over the whole database: an idle poll skips it."""
    store.add("no criteria", acceptance="")
    store.add("a human's", assignee="alice")
    run = harness.dispatch()
    assert (run.summary["outcome"], run.summary["bd_calls"]) == ("queue_empty", 1)
    assert store.methods() == ["queue"]


def test_a_run_whose_beads_all_wait_says_why_once(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    blocker = store.add("a human's", assignee="alice")
    waits = store.add("waits")
    store.depend(waits, blocker)
    later = store.add("later", defer_until=NOW + timedelta(hours=2))
    run = harness.dispatch(dispatcher_window_seconds=30, poll_interval_seconds=10)
    assert run.summary["polls"] > 1
    [read] = events_named(run, "queue.read")
    assert (read["matched"], read["ready"], read["eligible"]) == (2, 0, 0)
    assert (read["held_back_dependencies"], read["held_back_deferred"]) == ([waits], [later])


def test_queue_read_counts_what_dependencies_and_deferral_hold_back(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("A")
    blocked = store.add("B")
    store.depend(blocked, first)
    later = store.add("later", defer_until=NOW + timedelta(hours=2))
    read = harness.dispatch().event("queue.read")
    assert (read["matched"], read["ready"], read["eligible"]) == (3, 1, 1)
    assert (read["held_back_dependencies"], read["held_back_deferred"]) == ([blocked], [later])


def test_a_blocker_reopened_between_the_read_and_the_lock_holds_its_dependant_back(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    blocker = store.add("done", assignee="alice", status="closed")
    bead = store.add("free")
    store.depend(bead, blocker)
    # After the first read offered it, before the lock: a human reopens the blocker.
    store.after("ready", lambda: store.edit(blocker, status="open"), nth=1)
    run = harness.dispatch()
    assert run.summary["outcome"] == "nothing_claimable"
    assert posted(beadboard) == []
    assert store.bead(bead).status == "open"
