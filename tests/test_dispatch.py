"""The dispatcher run, in process: a memory store for bd, a fake clock, a real lock file and the
real BeadBoard client against the loopback stub. Event names and fields are the log contract.

The end of the file covers `python3 -m jobs` itself: configuration errors, the kill switch, and
one run of the module as a process.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from devtools.pods.process import base_env, start_jobs
from jobs import __main__ as cli
from jobs.lock import LOCK_FILE_NAME
from jobs.log import iso_utc
from jobs.protocol import ATTEMPTS_KEY, STAGE_KEY
from tests.support.harness import NOW, FakeClock, JobHarness, closed_port, events_named
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, STATUS

STAMP = iso_utc(NOW)
WINDOW: dict[str, Any] = {"dispatcher_window_seconds": 60, "poll_interval_seconds": 10}


def posted(beadboard: BeadBoardStub) -> list[str]:
    return [request.json["taskId"] for request in beadboard.requests_to(DISPATCH)]


def test_dispatches_the_eligible_bead_notes_the_claim_and_comments_the_dispatch(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    bead = store.add()
    seen_at_post: list[tuple[object, bool]] = []

    def dispatch(request: RecordedRequest) -> Reply:
        # What a reaper (or a second dispatcher) would find while the POST is in flight.
        seen_at_post.append((store.rows[bead]["metadata"].get(STAGE_KEY), harness.lock_is_free()))
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch()
    assert run.code == 0, run.stdout
    assert run.summary["outcome"] == "dispatched"
    assert run.summary["dispatched"] == [bead]
    state = store.bead(bead)
    assert (state.status, state.assignee, state.metadata) == ("in_progress", "agent", {})
    # The claim is a note; the dispatch a comment (it cannot overwrite the agent's first note).
    assert store.notes(bead) == [f"beads-dispatcher claimed at {STAMP}"]
    [comment] = state.comments
    assert comment.text == f"dispatched: job=job-1 (beads-dispatcher, {STAMP})"
    assert (comment.author, comment.created_at) == ("agent", NOW)
    # Marked "sending" before the POST, under the lock held from claim to record.
    assert seen_at_post == [("sending", False)]
    assert [(r.method, r.path) for r in beadboard.requests] == [("GET", STATUS), ("POST", DISPATCH)]
    assert beadboard.requests_to(DISPATCH)[0].json == {"taskId": bead}
    # bd ready, under the lock bd ready + the full query, claim, stage=sending, comment,
    # clear the stage.
    assert store.methods() == [
        "queue",
        "ready",
        "ready",
        "queue",
        "update",
        "update",
        "comment",
        "update",
    ]
    claim = store.log[4]
    assert claim.args == {
        "claim": True,
        "status": "in_progress",
        "note": f"beads-dispatcher claimed at {STAMP}",
        "set_metadata": {STAGE_KEY: "claimed"},
        "actor": "agent",
    }
    assert store.log[-1].args == {"unset_metadata": [STAGE_KEY]}  # metadata only: notes untouched
    assert run.summary["bd_calls"] == 8
    assert list(store.rows) == [bead]  # no lock bead, nothing created
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
    assert run.summary["returned_to_queue"] == [bead]
    state = store.bead(bead)
    assert (state.status, state.metadata) == ("open", {})
    assert store.notes(bead)[-1] == (
        f"agent busy (Agent is busy); back to open, not counted as a failed attempt "
        f"(beads-dispatcher, {STAMP})"
    )
    assert store.comments(bead) == []
    assert posted(beadboard) == [bead]


def test_409_in_a_watch_window_notes_and_posts_each_bead_once(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    # BeadBoard's status says "free" every time, yet every POST is refused.
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=409, json={"error": "full"}))
    run = harness.dispatch(**WINDOW)
    assert run.code == 0, run.stdout
    assert run.summary["polls"] == 6  # the last four find nothing left to try
    assert posted(beadboard) == [first, second]
    for bead in (first, second):
        assert store.bead(bead).status == "open"
        notes = store.notes(bead)
        assert len([n for n in notes if n.startswith("agent busy")]) == 1, notes
        assert len([n for n in notes if n.startswith("beads-dispatcher claimed")]) == 1, notes
    # A 409 ends its poll: the next bead waits for the next poll, not the same lock hold.
    steps = [
        e["event"]
        for e in run.events
        if e["event"] in ("lock.acquired", "claim.done", "dispatch.agent_busy", "lock.released")
    ]
    assert steps == ["lock.acquired", "claim.done", "dispatch.agent_busy", "lock.released"] * 2


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


def test_a_misrouted_200_is_dispatched_and_flagged_for_a_human(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    """An ingress answering for BeadBoard: the bead is taken as sent (a resend risks double
    work), and the record and a warning say the answer was not BeadBoard's."""
    bead = store.add()
    page = "<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"
    beadboard.program(DISPATCH, Reply(body=page, headers={"Content-Type": "text/html"}))
    run = harness.dispatch()
    assert (run.code, run.summary["dispatched"]) == (0, [bead])
    suspicious = run.event("dispatch.suspicious")
    assert suspicious["level"] == "warning"
    assert (suspicious["bead"], suspicious["http"], suspicious["content_type"]) == (
        bead,
        200,
        "text/html",
    )
    assert suspicious["excerpt"] == page
    assert store.comments(bead) == [
        "dispatched, unconfirmed: HTTP 200 with a non-JSON body (text/html); check BeadBoard's "
        f"ingress. Not sent again (beads-dispatcher, {STAMP})"
    ]
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [bead]


@pytest.mark.parametrize(
    ("reply", "reason"),
    # The whole request is bounded by the timeout, so the deadline speaks before httpx's own.
    [
        (Reply(delay=2), "timeout (no whole answer within 0.3s)"),
        (Reply(drop=True), "RemoteProtocolError"),
    ],
    ids=["timeout", "dropped"],
)
def test_no_answer_after_sending_is_never_sent_again(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub, reply: Reply, reason: str
) -> None:
    harness.http_timeout = 0.3
    bead = store.add()
    beadboard.program(DISPATCH, reply)
    first = harness.dispatch()
    assert first.code == 1
    assert first.summary["outcome"] == "dispatch_unknown"
    unknown = first.event("dispatch.unknown")
    assert (unknown["level"], unknown["bead"], unknown["bead_status"]) == (
        "error",
        bead,
        "in_progress",
    )
    state = store.bead(bead)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})
    assert store.comments(bead)[-1].startswith(f"dispatch outcome unknown: {reason}")
    assert "the reaper blocks this bead after 30m" in store.comments(bead)[-1]
    assert harness.dispatch().code == 0
    assert posted(beadboard) == [bead]


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


def test_lock_lost_before_the_post_sends_nothing_and_stops_the_run(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    beadboard.health.capacity = 2
    # Right after the sending marker lands, the lock file is replaced under the run's feet.
    store.after("update", harness.lock_path.unlink, nth=2)
    run = harness.dispatch(agent_health_url=f"{beadboard.url}/health")
    assert run.code == 1
    assert run.summary["outcome"] == "lock_lost"
    [error] = [e for e in run.events if e["level"] == "error"]
    assert error["event"] == "lock.lost"
    assert "is no longer held by this run" in error["error"]
    assert posted(beadboard) == []
    state = store.bead(first)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})
    [comment] = store.comments(first)
    assert comment.startswith("beads-dispatcher lost its dispatch lock (")
    assert "before sending: NOT sent to BeadBoard" in comment
    assert store.bead(second).status == "open"
    # Nothing written after the loss but that one comment.
    assert store.methods()[-3:] == ["update", "update", "comment"]


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
    assert "NOT sent" in comment and "the reaper blocks it after 30m" in comment, comment


def test_lock_lost_during_the_post_records_nothing_more(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    beadboard.health.capacity = 2

    def dispatch(request: RecordedRequest) -> Reply:
        harness.lock_path.unlink()
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    run = harness.dispatch(agent_health_url=f"{beadboard.url}/health")
    assert run.code == 1
    assert run.summary["outcome"] == "lock_lost"
    assert run.event("lock.lost")["level"] == "error"
    assert posted(beadboard) == [first]
    # Taken by BeadBoard: commented, but the stage stays `sending` (never resent) and the
    # second bead is never claimed.
    assert store.comments(first) == [f"dispatched: job=job-1 (beads-dispatcher, {STAMP})"]
    assert store.bead(first).metadata == {STAGE_KEY: "sending"}
    assert store.bead(second).status == "open"
    assert store.methods()[-1] == "comment"


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
    assert failed["error"].startswith("GET /api/agent-status: connection failed")
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


def test_python_m_jobs_runs_a_window_and_stops_on_sigterm(
    tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    """The module as the CronJob runs it: a process, a scripted bd, SIGTERM while idle."""
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
        BEADBOARD_URL=beadboard.url,
        DISPATCHER_WINDOW_SECONDS="120",
        POLL_INTERVAL_SECONDS="60",
    )
    process = start_jobs(["dispatch"], env)
    try:
        assert process.stdout is not None
        # The first poll is logged; the run now waits out its poll interval. A scripted bd
        # keeps no Dolt store, so the change detector has nothing to watch: bd every poll.
        seen = [process.stdout.readline() for _ in range(3)]
        assert all(seen), f"the run ended early: {seen}"
        assert [json.loads(line)["event"] for line in seen] == [
            "run.start",
            "detector.unavailable",
            "queue.read",
        ]
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == 0, stderr
    assert stderr == ""
    events = [json.loads(line) for line in [*seen, *rest.splitlines()]]
    summary = events[-1]
    assert summary["event"] == "tick.done"
    assert (summary["outcome"], summary["polls"], summary["bd_calls"]) == ("stopped", 1, 1)
    assert "run.stopping" in [e["event"] for e in events]
    assert argv_log.read_text().splitlines() == [
        f'--db {beads_dir} --actor agent --json query assignee="agent" AND status=open --limit 0'
    ]
    assert beadboard.requests == []
