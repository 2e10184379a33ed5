"""Two instances on one database, serving different assignees, in process: each touches only
its own assignee's beads, and neither waits on the other's lock."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jobs.database import Database
from jobs.lock import FileLock, lock_file_name, lock_name, lock_on
from jobs.protocol import CLAIMED_FOR_KEY, STAGE_KEY
from tests.support.harness import NOW, JobHarness, posted
from tests.support.memory_store import MemoryStore


@pytest.mark.parametrize(
    ("assignee", "name"),
    [("agent", "beads-autodispatch:code"), ("reviewer", "beads-autodispatch:code:reviewer")],
)
def test_each_assignee_has_a_lock_of_its_own(assignee: str, name: str) -> None:
    """The default assignee keeps the name it had: old and new runs exclude each other."""
    assert lock_name("code", assignee) == name


def test_long_lock_names_stay_within_64_and_apart() -> None:
    first, second = (lock_name("d" * 30, "reviewer-" + "x" * 30 + tail) for tail in "ab")
    assert first != second
    assert len(first) == len(second) == 64


def test_an_embedded_database_has_a_lock_file_per_assignee(tmp_path: Path) -> None:
    database = Database(dir=tmp_path, server=None, name="beads")
    described = {lock_on(database, {}, who).description for who in ("agent", "reviewer")}
    assert described == {f"flock {tmp_path / 'beads-autodispatch.lock'}"} | {
        f"flock {tmp_path / 'beads-autodispatch.reviewer.lock'}"
    }


def reviewer_lock(harness: JobHarness) -> FileLock:
    return FileLock(harness.beads_dir / lock_file_name("reviewer"))


def test_a_dispatcher_sends_only_its_assignees_beads(
    harness: JobHarness, store: MemoryStore
) -> None:
    mine = store.add("review it", assignee="reviewer")
    theirs = store.add("code it", assignee="agent")
    run = harness.dispatch(agent_assignee="reviewer", lock=reviewer_lock(harness))
    assert run.summary["dispatched"] == [mine]
    assert posted(harness.board) == [mine]
    assert store.bead(theirs).status == "open" and store.bead(theirs).notes == ""


def test_one_assignees_held_lock_does_not_stall_another(
    harness: JobHarness, store: MemoryStore
) -> None:
    mine = store.add("review it", assignee="reviewer")
    with harness.lock_held_elsewhere():  # the `agent` dispatcher, mid-hand-off
        run = harness.dispatch(agent_assignee="reviewer", lock=reviewer_lock(harness))
    assert run.summary["dispatched"] == [mine]


def test_the_same_assignees_held_lock_still_excludes(
    harness: JobHarness, store: MemoryStore
) -> None:
    store.add("review it", assignee="reviewer")
    other_run = reviewer_lock(harness)
    assert other_run.try_acquire()
    run = harness.dispatch(agent_assignee="reviewer", lock=reviewer_lock(harness))
    other_run.release()
    assert run.summary["outcome"] == "lock_busy"
    assert posted(harness.board) == []


def test_the_claim_names_its_assignee_and_the_send_clears_it(
    harness: JobHarness, store: MemoryStore
) -> None:
    bead = store.add("review it", assignee="reviewer")
    harness.dispatch(agent_assignee="reviewer", lock=reviewer_lock(harness))
    claim = next(call for call in store.log if call.args.get("claim"))
    assert claim.args["set_metadata"][CLAIMED_FOR_KEY] == "reviewer"
    assert CLAIMED_FOR_KEY not in store.bead(bead).metadata


def claimed(store: MemoryStore, assignee: str, **metadata: str) -> str:
    """A bead at stage `claimed`, untouched for a minute (well under the threshold)."""
    return store.add(
        "in hand",
        assignee=assignee,
        status="in_progress",
        metadata={STAGE_KEY: "claimed", **metadata},
        created_at=NOW - timedelta(days=1),
        updated_at=NOW - timedelta(minutes=1),
    )


@pytest.mark.parametrize(
    ("marks", "requeued"),
    [
        ({CLAIMED_FOR_KEY: "reviewer"}, True),
        ({}, True),  # claimed before instances: one lock covered the whole database
        ({CLAIMED_FOR_KEY: "agent"}, False),  # re-assigned while `agent`'s dispatcher has it
    ],
)
def test_the_reaper_requeues_only_claims_its_lock_covers(
    harness: JobHarness, store: MemoryStore, marks: dict[str, str], requeued: bool
) -> None:
    bead = claimed(store, "reviewer", **marks)
    run = harness.reap(agent_assignee="reviewer", lock=reviewer_lock(harness))
    assert (run.summary["requeued"] == [bead]) is requeued
    assert (store.bead(bead).status == "open") is requeued


def test_the_reaper_never_touches_another_assignees_beads(
    harness: JobHarness, store: MemoryStore
) -> None:
    stale = store.add("dead run", status="in_progress", updated_at=NOW - timedelta(hours=2))
    unsent = claimed(store, "agent")
    run = harness.reap(agent_assignee="reviewer", lock=reviewer_lock(harness))
    assert run.summary["in_progress"] == 0
    assert [store.bead(b).status for b in (stale, unsent)] == ["in_progress", "in_progress"]


def test_a_claim_outside_its_lock_is_blocked_after_the_threshold_never_requeued(
    harness: JobHarness, store: MemoryStore
) -> None:
    bead = claimed(store, "reviewer", **{CLAIMED_FOR_KEY: "agent"})
    store.edit(bead, updated_at=NOW - timedelta(hours=2))
    run = harness.reap(agent_assignee="reviewer", lock=reviewer_lock(harness))
    assert (run.summary["blocked"], run.summary["requeued"]) == ([bead], [])
    assert store.bead(bead).metadata == {}
