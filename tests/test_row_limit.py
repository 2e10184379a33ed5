"""bd's row limit (jobs/rowsize.py): a bead that bd could not update once the jobs have
written on it is never claimed, and one already past it costs the reaper a warning, not a
failed run. The memory store refuses updates as bd does (row_limit)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.localservices.beadboard import BeadBoardStub
from jobs.beads import BdTooLarge
from jobs.protocol import STAGE_KEY, Stage
from jobs.rowsize import ROW_LIMIT, WRITE_MARGIN, json_size, stored_size
from tests.support.harness import FakeClock, JobHarness, events_named, posted
from tests.support.memory_store import MemoryStore

WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 10}


def sized(store: MemoryStore, size: int, **fields: Any) -> str:
    """A bead whose stored row is exactly `size` bytes (its description padded)."""
    bead = store.add("big", **fields)
    grow = size - stored_size(store.rows[bead])
    store.edit(bead, description="x" * (grow - len('"description":"",')))
    assert stored_size(store.rows[bead]) == size
    return bead


@pytest.fixture
def limited(store: MemoryStore) -> MemoryStore:
    store.row_limit = ROW_LIMIT
    return store


def test_a_bead_without_room_for_the_jobs_notes_is_never_claimed(
    harness: JobHarness, limited: MemoryStore, beadboard: BeadBoardStub
) -> None:
    big = sized(limited, ROW_LIMIT - WRITE_MARGIN + 1, priority=0)
    small = limited.add("small", priority=1)
    before = limited.snapshot()[big]
    run = harness.dispatch(**WINDOW)
    assert run.code == 0, run.stdout
    assert posted(beadboard) == [small]
    assert limited.snapshot()[big] == before
    # Once per run, however many polls the window makes.
    [warning] = events_named(run, "bead.too_large")
    assert (warning["bead"], warning["level"]) == (big, "warning")
    assert (warning["size"], warning["limit"]) == (ROW_LIMIT - WRITE_MARGIN + 1, ROW_LIMIT)
    assert warning["reason"].startswith("too large for bd to update (57,344 bytes of 65,535)")


def test_a_bead_with_just_enough_room_is_dispatched(
    harness: JobHarness, limited: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = sized(limited, ROW_LIMIT - WRITE_MARGIN)
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [bead]


def test_bd_refusing_a_claim_as_too_large_is_a_warning_not_a_failure(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    store.fail("update", error=BdTooLarge, message="bd update: too large for column 'old_value'")
    run = harness.dispatch()
    assert run.code == 0
    assert events_named(run, "bead.too_large")[0]["bead"] == bead
    assert (posted(beadboard), events_named(run, "bead.failed")) == ([], [])


@pytest.mark.parametrize("stage", [Stage.CLAIMED, Stage.SENDING])
def test_the_reaper_warns_once_about_a_bead_stuck_past_the_limit_and_succeeds(
    harness: JobHarness, limited: MemoryStore, clock: FakeClock, stage: Stage
) -> None:
    stuck = sized(limited, ROW_LIMIT + 1, status="in_progress", metadata={STAGE_KEY: stage})
    clock.advance(3600)
    for _ in range(2):
        run = harness.reap()
        assert run.code == 0, run.stdout
        [warning] = events_named(run, "bead.too_large")
        assert (warning["bead"], warning["level"], warning["size"]) == (stuck, "warning", 65_536)
        assert f"`bd close {stuck}` still works" in warning["reason"]
        assert events_named(run, "bead.failed") == []
    assert limited.rows[stuck]["status"] == "in_progress"


def test_the_reaper_takes_bds_word_when_its_own_count_falls_short(
    harness: JobHarness, limited: MemoryStore, clock: FakeClock
) -> None:
    stuck = sized(limited, ROW_LIMIT, status="in_progress")
    limited.row_limit = ROW_LIMIT - 10  # bd counted a few bytes more than we did
    clock.advance(3600)
    run = harness.reap()
    assert run.code == 0
    assert events_named(run, "bead.too_large")[0]["bead"] == stuck


# -- the size itself ---------------------------------------------------------------------


def go_marshal(value: Any) -> bytes:
    """json.Marshal's bytes, from Python's encoder plus Go's HTML and U+2028/9 escaping."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode("utf-8")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_json_size_is_the_length_of_gos_encoding(value: Any) -> None:
    assert json_size(value) == len(go_marshal(value))


@pytest.mark.parametrize(
    ("text", "size"),
    [("<" * 10, 62), ("&>", 14), ("é", 4), ("\n\t\b\f", 10), ("\x01", 8), ("\u2028", 8)],
)
def test_strings_are_counted_as_go_escapes_them(text: str, size: int) -> None:
    assert json_size(text) == size


def test_only_the_fields_bd_stores_count() -> None:
    row = {"id": "tb-1", "priority": 2, "labels": ["a"]}
    printed = {**row, "comments": [{"text": "x" * 100}], "dependency_count": 3, "parent": "p"}
    assert stored_size(printed) == stored_size(row) == len(go_marshal(row))
