"""The dispatcher run, in process: a memory store for bd, a fake clock, a real lock file and the
real BeadBoard client, answered by the stub through httpx.MockTransport (over a socket where an
answer comes late or never). Event names and fields are the log contract.

The end of the file covers `python3 -m jobs` itself: configuration errors, the kill switch, and
one run of the module as a process.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from devtools.pods.process import JobRun, base_env, start_jobs
from jobs import __main__ as cli
from jobs.lock import LOCK_FILE_NAME
from jobs.log import iso_utc
from jobs.protocol import ATTEMPTS_KEY, CLAIMED_FOR_KEY, STAGE_KEY
from tests.support.harness import (
    LATE_BY,
    LATE_TIMEOUT,
    NOW,
    FakeClock,
    JobHarness,
    closed_port,
    events_named,
    posted,
)
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, STATUS

STAMP = iso_utc(NOW)
WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 10}


@dataclass(frozen=True)
class BeadRun:
    """One run over one eligible bead, and what was true while its POST was in flight."""

    run: JobRun
    bead: str
    at_post: list[tuple[object, bool]]  # (the bead's stage, the lock free?) per POST


@pytest.fixture
def happy(harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub) -> BeadRun:
    bead = store.add()
    at_post: list[tuple[object, bool]] = []

    def dispatch(request: RecordedRequest) -> Reply:
        # What a reaper (or a second dispatcher) would find while the POST is in flight.
        at_post.append((store.rows[bead]["metadata"].get(STAGE_KEY), harness.lock_is_free()))
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    return BeadRun(harness.dispatch(), bead, at_post)


def test_dispatching_the_eligible_bead_exits_0(happy: BeadRun) -> None:
    assert happy.run.code == 0, happy.run.stdout
    assert (happy.run.summary["outcome"], happy.run.summary["dispatched"]) == (
        "dispatched",
        [happy.bead],
    )


def test_a_dispatched_bead_is_in_progress_for_agent_with_no_stage(
    happy: BeadRun, store: MemoryStore
) -> None:
    state = store.bead(happy.bead)
    assert (state.status, state.assignee, state.metadata) == ("in_progress", "agent", {})


def test_the_claim_is_a_note(happy: BeadRun, store: MemoryStore) -> None:
    assert store.notes(happy.bead) == [f"beads-dispatcher claimed at {STAMP}"]


def test_the_dispatch_is_a_comment_with_the_job_id(happy: BeadRun, store: MemoryStore) -> None:
    # A comment, not a note: it cannot overwrite the agent's first note.
    [comment] = store.bead(happy.bead).comments
    assert comment.text == f"dispatched: job=job-1 (beads-dispatcher, {STAMP})"
    assert (comment.author, comment.created_at) == ("agent", NOW)


def test_another_instance_signs_with_its_own_cronjob(
    harness: JobHarness, store: MemoryStore
) -> None:
    """Two instances on one database: each note names the CronJob that wrote it."""
    bead = store.add(assignee="reviewer")
    run = harness.dispatch(agent_assignee="reviewer", cronjob_name="reviewer-dispatcher")
    assert run.summary["dispatched"] == [bead], run.stdout
    assert store.notes(bead) == [f"reviewer-dispatcher claimed at {STAMP}"]
    [comment] = store.bead(bead).comments
    assert comment.text == f"dispatched: job=job-1 (reviewer-dispatcher, {STAMP})"


def test_the_bead_is_marked_sending_under_the_lock_before_the_post(happy: BeadRun) -> None:
    assert happy.at_post == [("sending", False)]


def test_a_dispatch_asks_the_status_then_posts_the_bead_id(
    happy: BeadRun, beadboard: BeadBoardStub
) -> None:
    assert [(r.method, r.path) for r in beadboard.requests] == [("GET", STATUS), ("POST", DISPATCH)]
    assert beadboard.requests_to(DISPATCH)[0].json == {"taskId": happy.bead}


def test_a_dispatch_costs_eight_bd_calls_in_runbook_order(
    happy: BeadRun, store: MemoryStore
) -> None:
    # bd ready, under the lock bd ready + the full query, claim, stage=sending, comment,
    # clear the stage.
    expected = ["queue", "ready", "ready", "queue", "update", "update", "comment", "update"]
    assert store.methods() == expected
    assert happy.run.summary["bd_calls"] == len(expected)


def test_the_claim_is_one_update(happy: BeadRun, store: MemoryStore) -> None:
    assert store.log[4].args == {
        "claim": True,
        "status": "in_progress",
        "note": f"beads-dispatcher claimed at {STAMP}",
        "set_metadata": {STAGE_KEY: "claimed", CLAIMED_FOR_KEY: "agent"},
        "actor": "agent",
    }


def test_clearing_the_stage_touches_metadata_only(happy: BeadRun, store: MemoryStore) -> None:
    assert store.log[-1].args == {"unset_metadata": [STAGE_KEY]}


def test_a_dispatch_creates_no_bead(happy: BeadRun, store: MemoryStore) -> None:
    assert list(store.rows) == [happy.bead]  # no lock bead either


def test_a_dispatch_releases_the_lock(happy: BeadRun, harness: JobHarness) -> None:
    assert harness.lock_is_free()


def test_empty_queue_makes_no_http_request_and_never_touches_the_lock(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add("a human's bead", assignee="alice")
    run = harness.dispatch()
    assert run.code == 0
    assert run.summary["outcome"] == "queue_empty"
    assert (run.summary["polls"], run.summary["idle_polls"], run.summary["bd_calls"]) == (1, 1, 1)
    assert beadboard.requests == []
    assert store.methods() == ["queue"]
    assert not harness.lock_path.exists()


def test_the_queue_is_the_configured_assignees_and_claims_are_made_as_it(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    mine = store.add("for the bot", assignee="bot@corp.example")
    store.add("for another agent")
    run = harness.dispatch(agent_assignee="bot@corp.example")
    assert run.code == 0, run.stdout
    assert posted(beadboard) == [mine]
    reads = [call.args["assignee"] for call in store.log if call.method in ("ready", "queue")]
    assert reads == ["bot@corp.example"] * 4
    [claim] = [call for call in store.log if call.args.get("claim")]
    assert (claim.bead, claim.args["actor"]) == (mine, "bot@corp.example")


def test_beads_without_acceptance_criteria_are_not_eligible(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    blank = store.add(acceptance="   \n")
    missing = store.add("no criteria", acceptance="")
    before = store.snapshot()
    run = harness.dispatch()
    assert run.code == 0
    queue = run.event("queue.read")
    assert (queue["matched"], queue["eligible"]) == (2, 0)
    assert set(queue["skipped_no_acceptance"]) == {blank, missing}
    assert beadboard.requests == []
    assert store.snapshot() == before


def test_busy_agent_leaves_every_bead_alone(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    beadboard.busy = True
    before = store.snapshot()
    run = harness.dispatch()
    assert run.code == 0
    assert run.summary["outcome"] == "agent_busy"
    assert run.event("agent.busy")["waiting"] == 1
    assert [r.path for r in beadboard.requests] == [STATUS]
    assert store.snapshot() == before
    assert not harness.lock_path.exists()


def test_sixty_agent_beads_the_one_past_the_fiftieth_is_seen(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    # bd caps a query at 50 rows unless told otherwise; the store must hand over all of them.
    for index in range(59):
        store.add(f"no criteria {index}", acceptance="", priority=index % 3)
    eligible = store.add("the only eligible one", priority=4)
    run = harness.dispatch()
    assert run.code == 0, run.stdout
    assert run.event("queue.read")["matched"] == 60
    assert posted(beadboard) == [eligible]
    assert store.bead(eligible).status == "in_progress"


def test_order_is_priority_first_then_oldest(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    low_old = store.add("p2 old", priority=2, created_at=NOW - timedelta(hours=3))
    high_new = store.add("p1 new", priority=1, created_at=NOW - timedelta(hours=1))
    high_old = store.add("p1 old", priority=1, created_at=NOW - timedelta(hours=2))
    urgent = store.add("p0 newest", priority=0, created_at=NOW)
    codes = [harness.dispatch().code for _ in range(4)]
    assert codes == [0, 0, 0, 0]
    assert posted(beadboard) == [urgent, high_old, high_new, low_old]


def test_409_puts_the_bead_back_without_counting_an_attempt(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    beadboard.program(DISPATCH, Reply(status=409, json={"error": "Agent is busy"}))
    run = harness.dispatch()
    assert run.code == 0
    assert run.summary["outcome"] == "agent_busy_on_dispatch"
    assert run.summary["requeued"] == [bead]
    state = store.bead(bead)
    assert (state.status, state.metadata) == ("open", {})
    assert store.notes(bead)[-1] == (
        f"agent busy (Agent is busy); back to open, not counted as a failed attempt "
        f"(beads-dispatcher, {STAMP})"
    )
    assert store.comments(bead) == []
    assert posted(beadboard) == [bead]


@dataclass(frozen=True)
class BusyWindow:
    """A watch window over two beads where BeadBoard's status says "free" and every POST 409s."""

    run: JobRun
    beads: list[str]  # in dispatch order


@pytest.fixture
def busy_window(harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub) -> BusyWindow:
    beads = [store.add("first", priority=0), store.add("second", priority=1)]
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=409, json={"error": "full"}))
    return BusyWindow(harness.dispatch(**WINDOW), beads)


def test_409_in_a_watch_window_is_no_failure(busy_window: BusyWindow) -> None:
    assert busy_window.run.code == 0, busy_window.run.stdout
    assert busy_window.run.summary["polls"] == 6  # the last four find nothing left to try


def test_409_in_a_watch_window_posts_each_bead_once(
    busy_window: BusyWindow, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == busy_window.beads


@pytest.mark.parametrize("which", [0, 1], ids=["first", "second"])
def test_409_in_a_watch_window_hands_each_bead_back_open(
    busy_window: BusyWindow, store: MemoryStore, which: int
) -> None:
    assert store.bead(busy_window.beads[which]).status == "open"


@pytest.mark.parametrize("which", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize("note", ["beads-dispatcher claimed", "agent busy"])
def test_409_in_a_watch_window_notes_each_bead_once(
    busy_window: BusyWindow, store: MemoryStore, which: int, note: str
) -> None:
    notes = store.notes(busy_window.beads[which])
    assert len([n for n in notes if n.startswith(note)]) == 1, notes


def test_409_ends_its_poll_and_the_next_bead_waits_for_the_next(busy_window: BusyWindow) -> None:
    kept = ("lock.acquired", "claim.done", "dispatch.agent_busy", "lock.released")
    steps = [e["event"] for e in busy_window.run.events if e["event"] in kept]
    assert steps == list(kept) * 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(status=400, json={"error": "bead has no acceptance criteria"}),
            "HTTP 400 bead has no acceptance criteria",
        ),
        (Reply(status=404, body="Not Found"), "HTTP 404"),
        (Reply(status=302, headers={"Location": "/login"}), "HTTP 302"),
    ],
    ids=["400", "404", "302"],
)
def test_failed_dispatch_reopens_counts_and_exits_1(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, reply: Reply, reason: str
) -> None:
    bead = store.add()
    beadboard.program(DISPATCH, reply)
    run = harness.dispatch()
    assert run.code == 1
    assert run.summary["outcome"] == "dispatch_failed"
    assert run.summary["failed"] == [bead]
    state = store.bead(bead)
    assert state.status == "open"
    # bd keeps the JSON type of `--set-metadata auto_dispatch_attempts=1`: a number.
    assert state.metadata == {ATTEMPTS_KEY: 1}
    last = store.notes(bead)[-1]
    assert last.startswith(f"dispatch failed (attempt 1/3): {reason}"), last
    assert last.endswith(f"; back to open (beads-dispatcher, {STAMP})")
    failed = run.event("dispatch.failed")
    assert (failed["level"], failed["attempt"], failed["bead_status"]) == ("error", 1, "open")


NO_JOB_ID = "dispatched: BeadBoard answered HTTP {} without a job id"


@pytest.mark.parametrize(
    ("reply", "comment"),
    [
        (Reply(status=200, json={"job_id": "job-9"}), "dispatched: job=job-9 ("),
        (Reply(status=201, json={"job_id": 42}), "dispatched: job=42 ("),
        (
            Reply(status=202),
            "dispatched, unconfirmed: HTTP 202 with an empty body (application/octet-stream); ",
        ),
        (Reply(status=200, json={"status": "queued"}), NO_JOB_ID.format(200)),
        (Reply(status=200, json={"job_id": "  "}), NO_JOB_ID.format(200)),
        (
            Reply(status=200, body="<html>oops</html>", headers={"Content-Type": "text/html"}),
            "dispatched, unconfirmed: HTTP 200 with a non-JSON body (text/html); check "
            "BeadBoard's ingress. Not sent again (beads-dispatcher, ",
        ),
    ],
    ids=["200", "201-numeric-job-id", "202-empty-body", "200-no-job-id", "200-blank", "200-html"],
)
def test_any_2xx_is_dispatched_and_never_sent_again(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, reply: Reply, comment: str
) -> None:
    bead = store.add(metadata={ATTEMPTS_KEY: 1})
    beadboard.set_handler(DISPATCH, lambda request: reply)
    window = harness.dispatch(**WINDOW)
    assert window.code == 0, window.stdout
    assert window.summary["outcome"] == "dispatched"
    assert window.summary["dispatched"] == [bead]
    assert window.summary["polls"] == 6
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [bead]
    state = store.bead(bead)
    assert state.status == "in_progress"
    assert state.metadata == {}  # stage cleared, the failed attempt forgotten
    [text] = store.comments(bead)
    assert text.startswith(comment), text
    assert not any(note.startswith("dispatch failed") for note in store.notes(bead))


NGINX_PAGE = "<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"


@pytest.fixture
def misrouted(harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub) -> BeadRun:
    """An ingress answering for BeadBoard with its own page."""
    bead = store.add()
    beadboard.program(DISPATCH, Reply(body=NGINX_PAGE, headers={"Content-Type": "text/html"}))
    return BeadRun(harness.dispatch(), bead, [])


def test_a_misrouted_200_is_taken_as_sent(misrouted: BeadRun) -> None:
    # A resend risks double work.
    assert (misrouted.run.code, misrouted.run.summary["dispatched"]) == (0, [misrouted.bead])


def test_a_misrouted_200_is_a_warning_quoting_the_answer(misrouted: BeadRun) -> None:
    suspicious = misrouted.run.event("dispatch.suspicious")
    assert (suspicious["level"], suspicious["bead"]) == ("warning", misrouted.bead)
    assert (suspicious["http"], suspicious["content_type"]) == (200, "text/html")
    assert suspicious["excerpt"] == NGINX_PAGE


def test_a_misrouted_200_asks_a_human_on_the_bead(misrouted: BeadRun, store: MemoryStore) -> None:
    assert store.comments(misrouted.bead) == [
        "dispatched, unconfirmed: HTTP 200 with a non-JSON body (text/html); check BeadBoard's "
        f"ingress. Not sent again (beads-dispatcher, {STAMP})"
    ]


def test_a_misrouted_200_is_never_sent_again(
    misrouted: BeadRun, harness: JobHarness, beadboard: BeadBoardStub
) -> None:
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [misrouted.bead]


@dataclass(frozen=True)
class Unanswered:
    """A POST that went out and got no whole answer, and the reason the run gives for it."""

    run: JobRun
    bead: str
    reason: str


@pytest.fixture(
    params=[
        # The whole request is bounded by the timeout, so the deadline speaks before httpx's own.
        (Reply(delay=LATE_BY), f"timeout (no whole answer within {LATE_TIMEOUT:g}s)"),
        (Reply(drop=True), "RemoteProtocolError"),
    ],
    ids=["timeout", "dropped"],
)
def no_answer(
    request: pytest.FixtureRequest,
    harness: JobHarness,
    store: MemoryStore,
    beadboard: BeadBoardStub,
) -> Unanswered:
    reply, reason = request.param
    harness.over_sockets()
    bead = store.add()
    beadboard.program(DISPATCH, reply)
    return Unanswered(harness.dispatch(), bead, reason)


def test_no_answer_after_sending_fails_the_run_as_unknown(no_answer: Unanswered) -> None:
    assert (no_answer.run.code, no_answer.run.summary["outcome"]) == (1, "dispatch_unknown")


def test_no_answer_after_sending_is_an_error_line_with_the_bead_in_progress(
    no_answer: Unanswered,
) -> None:
    unknown = no_answer.run.event("dispatch.unknown")
    assert (unknown["level"], unknown["bead"], unknown["bead_status"]) == (
        "error",
        no_answer.bead,
        "in_progress",
    )


def test_no_answer_after_sending_leaves_the_bead_sending(
    no_answer: Unanswered, store: MemoryStore
) -> None:
    state = store.bead(no_answer.bead)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})


def test_no_answer_after_sending_comments_why_and_what_comes_next(
    no_answer: Unanswered, store: MemoryStore
) -> None:
    comment = store.comments(no_answer.bead)[-1]
    assert comment.startswith(f"dispatch outcome unknown: {no_answer.reason}")
    assert "the reaper blocks this bead after 30m" in comment


def test_no_answer_after_sending_is_never_sent_again(
    no_answer: Unanswered, harness: JobHarness, beadboard: BeadBoardStub
) -> None:
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [no_answer.bead]


def test_the_nth_failure_blocks_the_bead_and_stops_retrying(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=400, json={"error": "bad"}))
    codes = [harness.dispatch(max_dispatch_attempts=3).code for _ in range(5)]
    assert codes == [1, 1, 1, 0, 0]
    state = store.bead(bead)
    assert (state.status, state.metadata) == ("blocked", {})
    failures = [n for n in store.notes(bead) if n.startswith("dispatch failed")]
    assert [n.split(":")[0] for n in failures] == [
        "dispatch failed (attempt 1/3)",
        "dispatch failed (attempt 2/3)",
        "dispatch failed (attempt 3/3)",
    ]
    assert "— blocking; fix the cause, then set the bead back to open" in failures[-1]
    # Once blocked, no more POSTs and no more notes: the original's endless retry is gone.
    assert posted(beadboard) == [bead] * 3


def test_blocking_after_max_attempts_is_reported_as_such(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add(metadata={ATTEMPTS_KEY: "4"})  # a count bd may print as text
    beadboard.program(DISPATCH, Reply(status=400, json={"error": "x"}))
    run = harness.dispatch(max_dispatch_attempts=5)
    assert run.code == 1
    assert run.summary["outcome"] == "blocked_after_failures"
    assert run.summary["blocked"] == [bead]
    assert run.event("dispatch.failed")["bead_status"] == "blocked"
    assert store.bead(bead).status == "blocked"


def test_success_after_a_failure_clears_the_attempt_count(
    harness: JobHarness, store: MemoryStore
) -> None:
    bead = store.add(metadata={ATTEMPTS_KEY: 2, "owner_note": "keep me"})
    assert harness.dispatch().code == 0
    assert store.bead(bead).metadata == {"owner_note": "keep me"}


def test_a_bead_with_unreadable_metadata_is_skipped_and_the_next_is_dispatched(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    # bd accepts any JSON as metadata; a JSON array cannot be a bead's metadata object.
    odd = store.add("array metadata", priority=0, raw={"metadata": ["not", "an", "object"]})
    fine = store.add("fine", priority=1)
    odd_before = store.snapshot()[odd]
    run = harness.dispatch(**WINDOW)
    assert run.code == 0, run.stdout
    assert run.summary["polls"] == 6
    assert posted(beadboard) == [fine]
    skipped = events_named(run, "bead.skipped")
    assert [(e["bead"], e["level"]) for e in skipped] == [(odd, "warning")]
    assert skipped[0]["reason"].startswith("bd printed it in a shape we cannot read: metadata")
    assert run.summary["skipped"] == [odd]
    assert store.snapshot()[odd] == odd_before
    assert store.bead(fine).status == "in_progress"


def test_dry_run_changes_nothing_and_posts_nothing(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    later = store.add(priority=3)
    before = store.snapshot()
    run = harness.dispatch(dry_run=True)
    assert run.code == 0
    would = run.event("dry_run.would_dispatch")
    assert (would["bead"], would["beads"], would["slots"]) == (bead, [bead], 1)
    assert run.summary["outcome"] == "dry_run"
    assert later not in would["beads"]
    assert store.snapshot() == before
    assert store.methods() == ["queue", "ready", "ready", "queue"]  # reads, never a write
    assert posted(beadboard) == []
    assert not harness.lock_path.exists()


def test_kill_switch_off_touches_nothing(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    run = harness.dispatch(dispatcher_enabled=False)
    assert run.code == 0
    assert run.event("run.paused")["detail"] == "DISPATCHER_ENABLED is false"
    assert run.summary["outcome"] == "paused"
    assert store.calls == 0
    assert beadboard.requests == []


def test_a_bead_taken_by_a_human_meanwhile_is_skipped_for_the_next(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)

    # Between the query and the lock, a human takes the first bead.
    def reassign(request: RecordedRequest) -> Reply:
        store.edit(first, assignee="alice")
        return Reply(json={"busy": False})

    beadboard.set_handler(STATUS, reassign)
    run = harness.dispatch()
    assert run.code == 0
    skipped = run.event("claim.skipped")
    assert (skipped["bead"], skipped["detail"]) == (first, "changed since the query")
    assert posted(beadboard) == [second]
    assert (store.bead(first).status, store.bead(first).assignee) == ("open", "alice")


def test_a_claim_bd_refuses_is_lost_quietly_and_nothing_is_sent(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    # After the fresh query under the lock, before the claim: someone assigns it elsewhere.
    store.after("queue", lambda: store.edit(bead, assignee="alice"), nth=2)
    run = harness.dispatch()
    assert run.code == 0, run.stdout
    lost = run.event("claim.lost")
    assert lost["bead"] == bead
    assert "already claimed by alice" in lost["reason"]
    assert run.summary["outcome"] == "nothing_claimable"
    assert posted(beadboard) == []
    assert (store.bead(bead).status, store.notes(bead)) == ("open", [])


def test_a_held_lock_ends_the_poll_without_claiming(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    before = store.snapshot()
    with harness.lock_held_elsewhere():
        run = harness.dispatch()
    assert run.code == 0, run.stdout
    assert run.summary["outcome"] == "lock_busy"
    assert LOCK_FILE_NAME in run.event("lock.busy")["lock"]
    assert store.snapshot() == before
    assert store.methods() == ["queue", "ready"]
    assert posted(beadboard) == []
    # Released: the next run dispatches.
    assert harness.dispatch().summary["outcome"] == "dispatched"
    assert store.bead(bead).status == "in_progress"


# Takes the dispatch lock (argv[1]) in a process of its own, says so, and waits to be killed.
HOLD_THE_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_held_by_a_killed_process_is_free_at_once(
    harness: JobHarness, store: MemoryStore
) -> None:
    bead = store.add()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(harness.lock_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert harness.dispatch().summary["outcome"] == "lock_busy"
    finally:
        holder.kill()  # SIGKILL: no chance to release anything itself
        holder.wait(timeout=10)
    assert harness.dispatch().summary["outcome"] == "dispatched"
    assert store.bead(bead).status == "in_progress"


@dataclass(frozen=True)
class LockLost:
    """Two beads, two free slots (one batch: both claimed and marked `sending` together),
    and the lock file replaced under the run's feet."""

    run: JobRun
    first: str  # the bead in hand when the lock was lost
    second: str


@pytest.fixture
def lost_before_post(harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub) -> LockLost:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    beadboard.health.capacity = 2
    # Right after the batch's sending marker lands.
    store.after("update_many", harness.lock_path.unlink, nth=2)
    return LockLost(harness.dispatch(agent_health_url=harness.health_url), first, second)


def test_lock_lost_before_the_post_fails_the_run(lost_before_post: LockLost) -> None:
    assert lost_before_post.run.code == 1
    assert lost_before_post.run.summary["outcome"] == "lock_lost"


def test_lock_lost_before_the_post_is_one_error_line(lost_before_post: LockLost) -> None:
    [error] = [e for e in lost_before_post.run.events if e["level"] == "error"]
    assert error["event"] == "lock.lost"
    assert "is no longer held by this run" in error["error"]


def test_lock_lost_before_the_post_sends_nothing(
    lost_before_post: LockLost, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == []


def test_lock_lost_before_the_post_leaves_the_bead_sending(
    lost_before_post: LockLost, store: MemoryStore
) -> None:
    state = store.bead(lost_before_post.first)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})


def test_lock_lost_before_the_post_comments_not_sent(
    lost_before_post: LockLost, store: MemoryStore
) -> None:
    [comment] = store.comments(lost_before_post.first)
    assert comment.startswith("beads-dispatcher lost its dispatch lock (")
    assert "before sending: NOT sent to BeadBoard" in comment


def test_lock_lost_before_the_post_writes_nothing_after_those_comments(
    lost_before_post: LockLost, store: MemoryStore
) -> None:
    assert store.methods()[-4:] == ["update_many", "update_many", "comment", "comment"]


def test_lock_lost_before_the_post_leaves_the_rest_of_the_batch_sending_and_says_so(
    lost_before_post: LockLost, store: MemoryStore
) -> None:
    # Without the lock it may not hand the bead back: the reaper blocks it, as the note says.
    state = store.bead(lost_before_post.second)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})
    [comment] = store.comments(lost_before_post.second)
    assert "before sending: NOT sent to BeadBoard" in comment


def test_the_lost_lock_comment_says_what_the_reaper_will_do(
    harness: JobHarness, store: MemoryStore, clock: FakeClock
) -> None:
    bead = store.add()
    store.after("update", harness.lock_path.unlink, nth=2)
    assert harness.dispatch().summary["outcome"] == "lock_lost"
    clock.advance(31 * 60)
    reaped = harness.reap()
    assert reaped.summary["blocked"] == [bead]  # what the runbook promises, and what happens
    [comment] = store.comments(bead)
    assert "NOT sent" in comment and "the reaper blocks this bead after 30m" in comment, comment


@pytest.fixture
def lost_during_post(harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub) -> LockLost:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    beadboard.health.capacity = 2

    def dispatch(request: RecordedRequest) -> Reply:
        harness.lock_path.unlink()
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    return LockLost(harness.dispatch(agent_health_url=harness.health_url), first, second)


def test_lock_lost_during_the_post_fails_the_run(lost_during_post: LockLost) -> None:
    assert lost_during_post.run.code == 1
    assert lost_during_post.run.summary["outcome"] == "lock_lost"
    assert lost_during_post.run.event("lock.lost")["level"] == "error"


def test_lock_lost_during_the_post_sent_the_bead_once(
    lost_during_post: LockLost, beadboard: BeadBoardStub
) -> None:
    assert posted(beadboard) == [lost_during_post.first]


def test_lock_lost_during_the_post_still_comments_the_dispatch(
    lost_during_post: LockLost, store: MemoryStore
) -> None:
    comments = store.comments(lost_during_post.first)
    assert comments == [f"dispatched: job=job-1 (beads-dispatcher, {STAMP})"]


def test_lock_lost_during_the_post_leaves_the_stage_sending(
    lost_during_post: LockLost, store: MemoryStore
) -> None:
    # Never resent.
    assert store.bead(lost_during_post.first).metadata == {STAGE_KEY: "sending"}


def test_lock_lost_during_the_post_sends_no_more_and_says_so(
    lost_during_post: LockLost, store: MemoryStore
) -> None:
    state = store.bead(lost_during_post.second)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})
    [comment] = store.comments(lost_during_post.second)
    assert "before sending: NOT sent to BeadBoard" in comment


def test_bd_failing_on_the_query_exits_1_with_one_log_line_and_no_request(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    before = store.snapshot()
    store.fail("ready")
    run = harness.dispatch()
    assert run.code == 1
    [error] = [e for e in run.events if e["level"] == "error"]
    assert (error["event"], error["kind"]) == ("tick.failed", "BdError")
    assert error["error"] == "bd ready exited 1: injected failure"
    assert run.summary["outcome"] == "error"
    assert beadboard.requests == []
    assert store.snapshot() == before


def test_beadboard_down_at_status_check_changes_nothing(
    harness: JobHarness, store: MemoryStore
) -> None:
    store.add()
    before = store.snapshot()
    run = harness.dispatch(beadboard_url=f"http://127.0.0.1:{closed_port()}")
    assert run.code == 1
    failed = run.event("tick.failed")
    assert failed["kind"] == "BeadBoardError"
    assert failed["error"].startswith(f"BeadBoard GET {STATUS}: connection failed")
    assert store.snapshot() == before
    assert harness.lock_is_free()


# -- python3 -m jobs ---------------------------------------------------------------------------


def bd_that_must_not_run(directory: Path) -> Path:
    """A `bd` that exists (BD_BIN is checked) but fails any run that reaches it."""
    script = directory / "bd-must-not-run"
    script.write_text("#!/bin/sh\necho 'bd must not run here' >&2\nexit 99\n", encoding="utf-8")
    script.chmod(0o755)
    return script


@pytest.fixture
def cli_env(tmp_path: Path, beadboard: BeadBoardStub) -> dict[str, str]:
    return {
        "BD_BIN": str(bd_that_must_not_run(tmp_path)),
        "BEADS_DB": str(tmp_path / "beads"),
        "BEADBOARD_URL": beadboard.url,
    }


def run_main(args: list[str], environ: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    stream = io.StringIO()
    code = cli.main(args, environ=environ, clock=lambda: NOW, stream=stream)
    return code, [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"BEADBOARD_URL": "beadboard:80"}, "BEADBOARD_URL must be an http:// or https:// URL"),
        ({"MAX_DISPATCH_ATTEMPTS": "0"}, "MAX_DISPATCH_ATTEMPTS Input should be greater than"),
        ({"REAPER_THRESHOLD_MINUTES": "soon"}, "REAPER_THRESHOLD_MINUTES Input should be a valid"),
        ({"DISPATCHER_ENABLED": "maybe"}, "DISPATCHER_ENABLED Input should be a valid boolean"),
        ({"AGENT_ASSIGNEE": "agent OR x"}, "AGENT_ASSIGNEE must be one word"),
        ({"AGENT_ASSIGNEE": "none"}, "AGENT_ASSIGNEE must name a user"),
        ({"AGENT_ASSIGNEE": "NULL"}, "AGENT_ASSIGNEE must name a user"),
        ({"HTTP_TIMEOUT_SECONDS": "-1"}, "HTTP_TIMEOUT_SECONDS Input should be greater than"),
        ({"DISPATCHER_WINDOW_SECONDS": "1.5"}, "DISPATCHER_WINDOW_SECONDS Input should be"),
        ({"CRONJOB_NAME": "Reviewer Dispatcher"}, "CRONJOB_NAME String should match pattern"),
        ({"BD_BIN": "/nonexistent/bd"}, "BD_BIN '/nonexistent/bd': not found or not executable"),
        (
            {"BEADS_METADATA_FILE": "/nonexistent/metadata.json"},
            "BEADS_METADATA_FILE /nonexistent/metadata.json: no such file",
        ),
    ],
)
@pytest.mark.parametrize("job", ["dispatch", "reap"])
def test_bad_configuration_exits_2_with_one_clear_line(
    cli_env: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
    job: str,
    overrides: dict[str, str],
    message: str,
) -> None:
    code, events = run_main([job], {**cli_env, **overrides})
    assert_refused_config(code, events, capsys.readouterr().err, message)
    assert beadboard.requests == []


def assert_refused_config(
    code: int, events: list[dict[str, Any]], stderr: str, message: str
) -> None:
    """Exit 2, one stderr line naming the problem, the same as one `config.invalid` event."""
    assert code == 2, events
    [line] = stderr.splitlines()
    assert line.startswith(f"configuration error: {message}"), line
    [error] = [e for e in events if e["level"] == "error"]
    assert error["event"] == "config.invalid"
    assert line == f"configuration error: {error['error']}"


@pytest.mark.parametrize("job", ["dispatch", "reap"])
def test_kill_switch_off_in_the_env_touches_nothing(
    tmp_path: Path, beadboard: BeadBoardStub, capsys: pytest.CaptureFixture[str], job: str
) -> None:
    beads_dir = tmp_path / "beads"
    # Not even bd is looked for: a missing binary is no error while paused.
    environ = {
        "DISPATCHER_ENABLED": "false",
        "BD_BIN": "/nonexistent/bd",
        "BEADS_DB": str(beads_dir),
    }
    code, events = run_main([job], {**environ, "BEADBOARD_URL": beadboard.url})
    assert code == 0
    assert [e["event"] for e in events] == ["run.start", "run.paused"]
    assert events[-1]["detail"] == "DISPATCHER_ENABLED is false; nothing done"
    assert not beads_dir.exists()
    assert beadboard.requests == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "metadata",
    [
        {"backend": "dolt", "dolt_mode": "embedded", "dolt_database": "code"},
        # Server mode, Dolt unreachable: a run that does nothing never asks for the lock.
        {
            "backend": "dolt",
            "dolt_mode": "server",
            "dolt_server_host": "127.0.0.1",
            "dolt_server_port": 9,
            "dolt_database": "code",
        },
    ],
    ids=["embedded", "server"],
)
def test_the_runtime_switch_pauses_a_run_after_its_setup(
    cli_env: dict[str, str], tmp_path: Path, beadboard: BeadBoardStub, metadata: dict[str, Any]
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "DISPATCHER_ENABLED").write_text("false\n", encoding="utf-8")
    source = tmp_path / "mounted-metadata.json"
    source.write_text(json.dumps(metadata), encoding="utf-8")
    environ = {**cli_env, "RUNTIME_CONFIG_DIR": str(runtime), "BEADS_METADATA_FILE": str(source)}
    code, events = run_main(["dispatch"], environ)
    assert code == 0, events
    assert [e["event"] for e in events] == ["run.start", "run.paused", "tick.done"]
    assert (events[-1]["outcome"], events[-1]["bd_calls"]) == ("paused", 0)
    # The mounted metadata.json was copied into the writable beads dir first.
    assert json.loads((tmp_path / "beads" / "metadata.json").read_text()) == metadata
    assert beadboard.requests == []


@pytest.mark.parametrize("argv", [["explain"], ["dispatch", "tb-1"]])
def test_a_bead_id_goes_with_explain_only(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv, environ={})
    assert exit_info.value.code == 2
    assert "a bead id goes with explain, and only with explain" in capsys.readouterr().err


def test_an_unknown_job_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dispatchh"], environ={}, stream=io.StringIO())
    assert exited.value.code == 2
    assert "invalid choice: 'dispatchh'" in capsys.readouterr().err


@dataclass(frozen=True)
class StoppedRun:
    """`python3 -m jobs dispatch` as the CronJob runs it, sent SIGTERM while idle in its window."""

    returncode: int
    stderr: str
    events: list[dict[str, Any]]
    bd_argv: list[str]  # one line per bd call
    beads_dir: Path
    requests: list[RecordedRequest]  # what reached BeadBoard


@pytest.fixture(scope="module")
def sigterm_while_idle(
    tmp_path_factory: pytest.TempPathFactory, beadboard_server: BeadBoardStub
) -> StoppedRun:
    # Module scope: one process serves every test below (each start costs ~0.5 s of CPU).
    tmp_path = tmp_path_factory.mktemp("sigterm")
    argv_log = tmp_path / "bd-argv"
    bd = tmp_path / "bd"
    bd.write_text(f"#!/bin/sh\necho \"$@\" >> '{argv_log}'\necho '[]'\n", encoding="utf-8")
    bd.chmod(0o755)
    beads_dir = tmp_path / "beads"
    beads_dir.mkdir()
    (beads_dir / "metadata.json").write_text('{"backend": "dolt"}', encoding="utf-8")
    env = base_env(
        HOME=str(tmp_path),
        BD_BIN=str(bd),
        BEADS_DB=str(beads_dir),
        BEADBOARD_URL=beadboard_server.url,
        DISPATCHER_WINDOW_SECONDS="120",
        POLL_INTERVAL_SECONDS="60",
    )
    beadboard_server.reset()
    process = start_jobs(["dispatch"], env)
    try:
        assert process.stdout is not None
        # The first poll is logged; the run now waits out its poll interval. A scripted bd
        # keeps no Dolt store, so the change detector has nothing to watch: bd every poll.
        seen = [process.stdout.readline() for _ in range(3)]
        assert all(seen), f"the run ended early: {seen}"
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait(timeout=10)
    events = [json.loads(line) for line in [*seen, *rest.splitlines()]]
    argv = argv_log.read_text().splitlines()
    return StoppedRun(
        process.returncode, stderr, events, argv, beads_dir, beadboard_server.requests
    )


def test_python_m_jobs_logs_its_first_poll_before_waiting(sigterm_while_idle: StoppedRun) -> None:
    # A scripted bd keeps no Dolt store: no change signal, so bd reads every poll.
    assert [e["event"] for e in sigterm_while_idle.events[:3]] == [
        "run.start",
        "detector.unavailable",
        "queue.read",
    ]


def test_python_m_jobs_exits_0_quietly_on_sigterm(sigterm_while_idle: StoppedRun) -> None:
    assert (sigterm_while_idle.returncode, sigterm_while_idle.stderr) == (0, "")


def test_python_m_jobs_says_it_is_stopping(sigterm_while_idle: StoppedRun) -> None:
    assert "run.stopping" in [e["event"] for e in sigterm_while_idle.events]


def test_python_m_jobs_stopped_in_its_window_sums_up_one_poll(
    sigterm_while_idle: StoppedRun,
) -> None:
    summary = sigterm_while_idle.events[-1]
    assert summary["event"] == "tick.done"
    assert (summary["outcome"], summary["polls"], summary["bd_calls"]) == ("stopped", 1, 1)


def test_python_m_jobs_idle_poll_is_one_unlimited_bd_query(sigterm_while_idle: StoppedRun) -> None:
    assert sigterm_while_idle.bd_argv == [
        f"--db {sigterm_while_idle.beads_dir} --actor agent --json query "
        'assignee="agent" AND status=open --limit 0'
    ]


def test_python_m_jobs_idle_asks_beadboard_nothing(sigterm_while_idle: StoppedRun) -> None:
    assert sigterm_while_idle.requests == []
