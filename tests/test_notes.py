"""What `explain` reads back from a bead is what the jobs wrote on it, whichever instance
wrote it."""

from __future__ import annotations

import pytest

from components import names
from jobs import notes
from jobs.notes import DispatcherNotes, ReaperNotes
from tests.support.harness import NOW

DEFAULT = DispatcherNotes()
REVIEWER = DispatcherNotes("reviewer-dispatcher")


@pytest.mark.parametrize("signer", [DEFAULT, REVIEWER], ids=["default", "reviewer"])
def test_a_dispatch_record_names_its_job_and_time(signer: DispatcherNotes) -> None:
    record = signer.dispatched("job-7", 200, NOW)
    assert record.endswith(f"({signer.by}, 2026-03-02T09:30:00Z)")
    assert notes.dispatched_job(record) == ("job-7", "2026-03-02T09:30:00Z")


def test_a_dispatch_without_a_job_id_is_not_a_job() -> None:
    assert notes.dispatched_job(DEFAULT.dispatched(None, 202, NOW)) is None
    unconfirmed = DEFAULT.dispatched_unconfirmed(200, "an empty body", "", NOW)
    assert notes.dispatched_job(unconfirmed) is None


@pytest.mark.parametrize("signer", [DEFAULT, REVIEWER], ids=["default", "reviewer"])
def test_the_note_that_blocked_a_bead_gives_its_attempts_and_reason(
    signer: DispatcherNotes,
) -> None:
    text = "\n".join(
        [
            signer.dispatch_failed(1, 2, "HTTP 400 no", NOW),
            signer.dispatch_failed(2, 2, "HTTP 400 still", NOW),
        ]
    )
    assert notes.gave_up(text) == (2, "HTTP 400 still")


@pytest.mark.parametrize(
    "later",
    [
        DEFAULT.claimed(NOW),
        REVIEWER.claimed(NOW),
        REVIEWER.not_sent("the kill switch", NOW),
        ReaperNotes("reviewer-reaper").reaped(40, 30, NOW),
    ],
    ids=["claimed", "claimed-by-another-instance", "not-sent", "reaped"],
)
def test_a_later_note_of_the_jobs_means_the_failures_are_history(later: str) -> None:
    text = "\n".join([DEFAULT.dispatch_failed(3, 3, "HTTP 400", NOW), later])
    assert notes.gave_up(text) is None


def test_a_later_note_of_somebody_else_leaves_the_failures_standing() -> None:
    text = "\n".join([DEFAULT.dispatch_failed(3, 3, "HTTP 400", NOW), "looked at it (alice)"])
    assert notes.gave_up(text) == (3, "HTTP 400")


def test_notes_are_signed_with_the_cronjob_names() -> None:
    """A note's author is the CronJob that wrote it, so `kubectl get cronjob` finds it."""
    assert (DEFAULT.by, ReaperNotes().by) == (names.DISPATCHER_NAME, names.REAPER_NAME)
    reviewer = names.ObjectNames("reviewer")
    assert REVIEWER.claimed(NOW).startswith(f"{reviewer.dispatcher} claimed at ")
    reaped = ReaperNotes(reviewer.reaper).reaped(40, 30, NOW)
    assert reaped.startswith(f"{reviewer.reaper}: ")
    assert reaped.endswith(f"({reviewer.reaper}, 2026-03-02T09:30:00Z)")
