"""`bd update ID ID ...` on the real bd 1.0.2, as the dispatcher's batches use it, and the
memory store's `update_many` held to the same answers (tests/test_batch.py relies on it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devtools.localservices.bd import RealBd
from jobs.beads import BdClient, BdRejected, Change
from jobs.protocol import STAGE_KEY, Status
from tests.support.harness import FakeClock
from tests.support.memory_store import MemoryStore


def claim(store: BdClient | MemoryStore, bead_ids: list[str]) -> set[str]:
    return store.update_many(
        bead_ids,
        Change(
            claim=True,
            status=Status.IN_PROGRESS,
            note="claimed",
            set_metadata={STAGE_KEY: "claimed"},
            actor="agent",
        ),
    )


@pytest.fixture
def client(real_bd: RealBd, monkeypatch: pytest.MonkeyPatch) -> BdClient:
    monkeypatch.setenv("HOME", real_bd.env()["HOME"])  # bd writes state under HOME
    return BdClient(str(real_bd.binary), real_bd.beads_dir, actor="agent", timeout_seconds=60)


def real_beads(bd: RealBd) -> tuple[str, str, str]:
    first, second, bobs = (
        bd.create(title, assignee="agent", acceptance="x") for title in ("a", "b", "bob's")
    )
    bd.update(bobs, "--assignee", "bob")
    return first, second, bobs


def test_bd_claims_each_it_can_and_names_them(real_bd: RealBd, client: BdClient) -> None:
    first, second, bobs = real_beads(real_bd)
    assert claim(client, [first, bobs, second]) == {first, second}
    shown = real_bd.show_many([first, second, bobs])
    for bead in (first, second):
        assert (shown[bead]["status"], shown[bead]["assignee"]) == ("in_progress", "agent")
        assert shown[bead]["metadata"] == {STAGE_KEY: "claimed"}
        assert shown[bead]["notes"] == "claimed"
    # The one held by someone else is as it was.
    assert (shown[bobs]["status"], shown[bobs]["assignee"]) == ("open", "bob")
    assert not shown[bobs].get("metadata")


def test_bd_claiming_none_is_a_refusal(real_bd: RealBd, client: BdClient) -> None:
    *_, bobs = real_beads(real_bd)
    with pytest.raises(BdRejected, match="already claimed"):
        claim(client, [bobs])


def test_a_second_claim_of_ones_own_beads_succeeds(real_bd: RealBd, client: BdClient) -> None:
    # What the dispatcher's bead-by-bead retry after a batch that died midway relies on.
    first, second, _ = real_beads(real_bd)
    claim(client, [first, second])
    assert claim(client, [first, second]) == {first, second}


def test_the_memory_store_answers_as_bd_does(real_bd: RealBd, client: BdClient) -> None:
    first, second, bobs = real_beads(real_bd)
    store = MemoryStore(FakeClock(datetime.now(UTC)))
    mine = [store.add(title) for title in ("a", "b")]
    theirs = store.add("bob's", assignee="bob")
    from_bd = claim(client, [first, bobs, second])
    from_memory = claim(store, [mine[0], theirs, mine[1]])
    assert (len(from_bd), bobs in from_bd) == (len(from_memory), theirs in from_memory)
    with pytest.raises(BdRejected):
        claim(store, [theirs])
