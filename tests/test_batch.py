"""A poll fills every free agent slot at once: one bd call claims the batch, one marks it
`sending`, the POSTs follow one another, the records come after the last POST.

In-process, with the memory store; a bead bd refuses inside a batch is asked again on its
own (tests/support/memory_store.py `update_many` models bd 1.0.2 going on past it).
"""

from __future__ import annotations

import pytest

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from jobs.beads import BdRejected
from jobs.protocol import STAGE_KEY
from tests.support.harness import JobHarness, events_named, posted
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH


@pytest.fixture
def three(store: MemoryStore, beadboard: BeadBoardStub) -> list[str]:
    beadboard.health.capacity = 3
    return [store.add(f"b{i}", priority=i) for i in range(3)]


def test_three_free_slots_cost_two_bd_calls_before_the_first_post(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str]
) -> None:
    harness.dispatch(agent_health_url=harness.health_url)
    assert posted(beadboard) == three
    assert store.methods()[:4] == ["queue", "ready", "ready", "queue"]
    assert store.methods()[4:6] == ["update_many", "update_many"]
    assert [call.args["beads"] for call in store.log[4:6]] == [three, three]


def test_every_post_of_a_batch_goes_before_any_record(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str]
) -> None:
    writes_at_post: list[int] = []

    def dispatch(request: RecordedRequest) -> Reply:
        writes_at_post.append(store.calls)
        return Reply(json={"job_id": f"job-{request.json['taskId']}"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert writes_at_post == [6, 6, 6]
    assert run.summary["dispatched"] == three
    for bead in three:
        state = store.bead(bead)
        assert (state.status, state.metadata) == ("in_progress", {})
        assert store.comments(bead) == [f"dispatched: job=job-{bead} " + _stamp_of(store, bead)]


def _stamp_of(store: MemoryStore, bead: str) -> str:
    comment = store.comments(bead)[0]
    return comment[comment.index("(") :]


def test_a_bead_refused_in_the_batch_leaves_its_slot_to_the_next(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str]
) -> None:
    beadboard.health.capacity = 2
    first, second, third = three
    store.fail("update", bead=first, error=BdRejected, message="issue already claimed by bob")
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert posted(beadboard) == [second, third]
    assert [e["bead"] for e in events_named(run, "claim.lost")] == [first]
    assert store.bead(first).status == "open"


@pytest.mark.parametrize("land", [False, True], ids=["before-writing", "after-writing"])
def test_a_batch_claim_that_fails_is_done_bead_by_bead(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str], land: bool
) -> None:
    # bd dying midway (a timeout) may have claimed some: a claim of one's own is a no-op.
    store.fail("update_many", nth=1, land=land)
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert posted(beadboard) == three
    assert run.summary["dispatched"] == three
    assert len(events_named(run, "claim.batch_failed")) == 1
    assert all(store.bead(bead).metadata == {} for bead in three)


def test_a_batch_marker_that_fails_is_written_bead_by_bead(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str]
) -> None:
    store.fail("update_many", nth=2)
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert posted(beadboard) == three
    assert len(events_named(run, "mark.batch_failed")) == 1
    assert store.methods()[6:9] == ["update", "update", "update"]


def test_a_409_hands_the_rest_of_the_batch_back_uncounted(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, three: list[str]
) -> None:
    beadboard.program(DISPATCH, Reply(status=409, json={"error": "Agent is busy"}))
    run = harness.dispatch(agent_health_url=harness.health_url)
    first, *rest = three
    assert posted(beadboard) == [first]
    assert sorted(run.summary["requeued"]) == sorted(three)
    # Claim, marker, then the two not sent handed back together; the first's own record.
    assert store.methods()[4:] == ["update_many", "update_many", "update_many", "update"]
    for bead in rest:
        state = store.bead(bead)
        assert (state.status, STAGE_KEY in state.metadata) == ("open", False)
        assert store.notes(bead)[-1].startswith(
            f"not dispatched: the agent was full (409 for {first}); back to open, "
            "not counted as a failed attempt"
        )
