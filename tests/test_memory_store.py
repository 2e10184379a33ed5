"""The memory store behaves as bd 1.0.2 does where the jobs rely on it (docs/bd-contract.md),
and its fault injection does what the fault tests assume."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.beads import BdError, BdRejected, BeadStore
from jobs.protocol import Status
from tests.support.harness import NOW, FakeClock
from tests.support.memory_store import MemoryStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock)


def test_it_is_a_bead_store(store: MemoryStore) -> None:
    typed: BeadStore = store  # mypy holds it to the protocol
    assert typed.calls == 0


def test_a_claim_compares_the_assignee_only(store: MemoryStore, clock: FakeClock) -> None:
    unassigned = store.add(assignee="", status="closed")
    mine = store.add(assignee="agent", status="blocked")
    theirs = store.add(assignee="alice")
    clock.advance(60)
    store.update(unassigned, claim=True)
    # Any status can be claimed when unassigned; it becomes in_progress.
    assert (store.bead(unassigned).assignee, store.bead(unassigned).status) == (
        "agent",
        "in_progress",
    )
    assert store.bead(unassigned).updated_at == NOW + timedelta(seconds=60)
    # Already the actor's: "succeeds", changes nothing.
    store.update(mine, claim=True)
    assert (store.bead(mine).status, store.bead(mine).updated_at) == ("blocked", NOW)
    before = store.snapshot()[theirs]
    with pytest.raises(BdRejected, match="already claimed by alice"):
        store.update(theirs, claim=True, status=Status.IN_PROGRESS, note="mine now")
    assert store.snapshot()[theirs] == before


def test_unknown_ids(store: MemoryStore) -> None:
    with pytest.raises(BdRejected, match="no issue found"):
        store.update("tb-999", status=Status.OPEN)
    with pytest.raises(BdRejected, match="no issue found"):
        store.comment("tb-999", "hello")
    # `show` fails for any lookup; BdClient reads bd's words as a refusal, a kind of BdError.
    with pytest.raises(BdError, match="no issues found matching the provided IDs"):
        store.show("tb-999")


def test_notes_append_as_lines_and_writes_stamp_updated_at(
    store: MemoryStore, clock: FakeClock
) -> None:
    bead = store.add()
    store.update(bead, note="first")
    clock.advance(5)
    store.update(bead, note="second", status=Status.BLOCKED)
    assert store.rows[bead]["notes"] == "first\nsecond"
    assert (store.bead(bead).status, store.bead(bead).updated_at) == ("blocked", clock())


def test_a_comment_is_a_row_of_its_own(store: MemoryStore, clock: FakeClock) -> None:
    bead = store.add()
    clock.advance(90)
    store.comment(bead, "still on it")
    shown = store.show(bead)
    assert shown.updated_at == NOW  # bd's `comments add` leaves the bead alone
    [comment] = shown.comments
    assert (comment.text, comment.author, comment.created_at) == ("still on it", "agent", clock())
    assert shown.last_activity == clock()
    # `bd query` does not list comments.
    [queued] = store.queue("agent", Status.OPEN).beads
    assert queued.comments == []


def test_metadata_keeps_json_types_and_an_uneditable_one_fails(store: MemoryStore) -> None:
    bead = store.add(metadata={"gone": "x"})
    store.update(
        bead, set_metadata={"n": "2", "flag": "true", "word": "claimed"}, unset_metadata=["gone"]
    )
    assert store.rows[bead]["metadata"] == {"n": 2, "flag": True, "word": "claimed"}
    odd = store.add(assignee="", raw={"metadata": ["x"]})
    with pytest.raises(BdError, match="not an object"):
        store.update(odd, claim=True, set_metadata={"k": "v"})
    assert store.rows[odd]["assignee"] == "agent"  # the claim is a commit of its own


def test_an_unreadable_row_does_not_hide_the_rest(store: MemoryStore) -> None:
    odd = store.add(raw={"metadata": ["x"]})
    fine = store.add()
    store.add(status="in_progress")
    result = store.queue("agent", Status.OPEN)
    assert [bead.id for bead in result.beads] == [fine]
    assert list(result.unreadable) == [odd]
    assert result.unreadable[odd].startswith("metadata")


def test_faults_hit_the_calls_they_name_and_may_land_first(store: MemoryStore) -> None:
    first, second = store.add(), store.add()
    store.fail("update", nth=2, land=True)
    store.fail(bead=second)
    store.update(first, note="one")
    with pytest.raises(BdError, match=r"^bd update exited 1: injected failure$"):
        store.update(first, note="two")
    assert store.notes(first) == ["one", "two"]  # landed, then failed
    with pytest.raises(BdError, match=r"^bd comments exited 1"):
        store.comment(second, "x")
    assert store.comments(second) == []
    assert [(call.method, call.bead, call.args) for call in store.log] == [
        ("update", first, {"note": "one"}),
        ("update", first, {"note": "two"}),
        ("comment", second, {"text": "x"}),
    ]
    assert store.calls == 3


def test_a_hook_runs_after_the_call_it_names(store: MemoryStore) -> None:
    bead = store.add()
    store.after("queue", lambda: store.edit(bead, assignee="alice"), nth=1)
    assert [b.id for b in store.queue("agent", Status.OPEN).beads] == [bead]
    assert store.queue("agent", Status.OPEN).beads == []
