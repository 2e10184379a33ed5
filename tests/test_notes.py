"""What `explain` reads back from a bead is what the jobs wrote on it."""

from __future__ import annotations

from components import names
from jobs import notes
from tests.support.harness import NOW


def test_a_dispatch_record_names_its_job_and_time() -> None:
    assert notes.dispatched_job(notes.dispatched("job-7", 200, NOW)) == (
        "job-7",
        "2026-03-02T09:30:00Z",
    )


def test_a_dispatch_without_a_job_id_is_not_a_job() -> None:
    assert notes.dispatched_job(notes.dispatched(None, 202, NOW)) is None
    unconfirmed = notes.dispatched_unconfirmed(200, "an empty body", "", NOW)
    assert notes.dispatched_job(unconfirmed) is None


def test_the_note_that_blocked_a_bead_gives_its_attempts_and_reason() -> None:
    text = "\n".join(
        [
            notes.dispatch_failed(1, 2, "HTTP 400 no", NOW),
            notes.dispatch_failed(2, 2, "HTTP 400 still", NOW),
        ]
    )
    assert notes.gave_up(text) == (2, "HTTP 400 still")


def test_a_later_note_of_the_jobs_means_the_failures_are_history() -> None:
    text = "\n".join([notes.dispatch_failed(3, 3, "HTTP 400", NOW), notes.claimed(NOW)])
    assert notes.gave_up(text) is None


def test_notes_are_signed_with_the_cronjob_names() -> None:
    """A note's author is the CronJob that wrote it, so `kubectl get cronjob` finds it."""
    assert (notes.DISPATCHER, notes.REAPER) == (names.DISPATCHER_NAME, names.REAPER_NAME)
