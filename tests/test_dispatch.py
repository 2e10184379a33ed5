"""The dispatcher tick, end to end through its CLI, against the fake bd and the BeadBoard stub."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.lock import LOCK_FILE_NAME
from jobs.protocol import ATTEMPTS_KEY, STAGE_KEY
from localservices.beadboard import BeadBoardStub, RecordedRequest, Reply
from pods.process import JobRun
from tests.conftest import (
    HOLD_AND_WAIT,
    JobRunner,
    agent_bead,
    bd_argvs,
    comments_of,
    lock_held_elsewhere,
    lock_is_free,
    notes_of,
)
from tests.support.fake_bd import FakeBd
from tests.support.fixtures import FakeBdEnv

STATUS = "/api/agent-status"
DISPATCH = "/api/agent-dispatch"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def api(fake_bd: FakeBdEnv) -> FakeBd:
    return fake_bd.api


def test_dispatches_the_eligible_bead_notes_the_claim_and_comments_the_dispatch(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    bead = agent_bead(api)
    seen_at_post: list[tuple[object, bool]] = []

    def dispatch(request: RecordedRequest) -> Reply:
        # What a reaper (or a second dispatcher) would find while the POST is in flight.
        stage = api.get(bead).get("metadata", {}).get(STAGE_KEY)
        seen_at_post.append((stage, lock_is_free(fake_bd.db_dir)))
        return Reply(json={"job_id": "job-1"})

    beadboard.set_handler(DISPATCH, dispatch)
    result = run_job("dispatch")
    assert result.code == 0, result.stderr
    assert result.summary["outcome"] == "dispatched"
    assert result.summary["dispatched"] == [bead]
    state = api.get(bead)
    assert state["status"] == "in_progress"
    assert state["assignee"] == "agent"
    assert STAGE_KEY not in state.get("metadata", {})
    # The claim is a note; the dispatch a comment (it cannot overwrite the agent's first note).
    [claimed] = notes_of(api, bead)
    assert claimed.startswith("auto-dispatcher claimed at 20")
    [dispatched] = api.comments(bead)
    assert str(dispatched["text"]).startswith("dispatched: job=job-1 (auto-dispatcher, 20")
    assert dispatched["author"] == "agent"
    # Marked "sending" before the POST, under the lock held from claim to record.
    assert seen_at_post == [("sending", False)]
    assert [(r.method, r.path) for r in beadboard.requests] == [("GET", STATUS), ("POST", DISPATCH)]
    assert beadboard.requests_to(DISPATCH)[0].json == {"taskId": bead}
    calls = [call["subcommand"] for call in fake_bd.calls()]
    # query, fresh query under the lock, claim, stage=sending, comment, clear the stage.
    assert calls == ["query", "query", "update", "update", "comments", "update"]
    assert lock_is_free(fake_bd.db_dir)


def test_empty_queue_makes_no_http_request_and_never_touches_the_lock(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    api.create("a human's bead", assignee="alice", acceptance="x")
    result = run_job("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "queue_empty"
    assert beadboard.requests == []
    assert [call["subcommand"] for call in fake_bd.calls()] == ["query"]
    assert not (fake_bd.db_dir / LOCK_FILE_NAME).exists()


def test_the_queue_query_quotes_the_assignee(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    mine = agent_bead(api, "for the bot", assignee="bot@corp.example")
    agent_bead(api, "for another agent")
    result = run_job("dispatch", AGENT_ASSIGNEE="bot@corp.example")
    assert result.code == 0, result.stdout
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": mine}]
    queries = bd_argvs(fake_bd, "query")
    assert queries and all('assignee="bot@corp.example" AND status=open' in q for q in queries)


def test_beads_without_acceptance_criteria_are_not_eligible(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    blank = agent_bead(api, acceptance="   \n")
    missing = api.create("no criteria", assignee="agent")
    before = api.all()
    result = run_job("dispatch")
    assert result.code == 0
    assert set(result.event("queue.read")["skipped_no_acceptance"]) == {blank, missing}
    assert beadboard.requests == []
    assert api.all() == before


def test_busy_agent_leaves_every_bead_alone(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    agent_bead(api)
    beadboard.busy = True
    before = api.all()
    result = run_job("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "agent_busy"
    assert [r.path for r in beadboard.requests] == [STATUS]
    assert api.all() == before


def test_sixty_agent_beads_only_the_one_past_the_fiftieth_is_eligible(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    for index in range(59):
        api.create(f"no criteria {index}", assignee="agent", priority=index % 3)
    eligible = agent_bead(api, "the only eligible one", priority=4)
    # bd's default cap would never show it: the test would be meaningless otherwise.
    capped = api.query('assignee="agent" AND status=open')
    assert len(capped) == 50 and eligible not in {row["id"] for row in capped}
    result = run_job("dispatch")
    assert result.code == 0, result.stdout
    assert result.event("queue.read")["matched"] == 60
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": eligible}]
    assert api.get(eligible)["status"] == "in_progress"


def test_order_is_priority_first_then_oldest(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    low_old = agent_bead(api, "p2 old", priority=2, created_at=NOW - timedelta(hours=3))
    high_new = agent_bead(api, "p1 new", priority=1, created_at=NOW - timedelta(hours=1))
    high_old = agent_bead(api, "p1 old", priority=1, created_at=NOW - timedelta(hours=2))
    urgent = agent_bead(api, "p0 newest", priority=0, created_at=NOW)
    for _ in range(4):
        assert run_job("dispatch").code == 0
    order = [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)]
    assert order == [urgent, high_old, high_new, low_old]


def test_409_puts_the_bead_back_without_counting_an_attempt(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    beadboard.program(DISPATCH, Reply(status=409, json={"error": "Agent is busy"}))
    result = run_job("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "agent_busy_on_dispatch"
    state = api.get(bead)
    assert state["status"] == "open"
    assert STAGE_KEY not in state.get("metadata", {})
    assert ATTEMPTS_KEY not in state.get("metadata", {})
    assert notes_of(api, bead)[-1].startswith("agent busy (Agent is busy); back to open")
    assert comments_of(api, bead) == []
    assert len(beadboard.requests_to(DISPATCH)) == 1


def test_409_in_a_watch_window_notes_and_posts_each_bead_once(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    first = agent_bead(api, "first", priority=0)
    second = agent_bead(api, "second", priority=1)
    # BeadBoard's status says "free" every time, yet every POST is refused.
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=409, json={"error": "full"}))
    result = run_job("dispatch", DISPATCH_WINDOW_SECONDS="6", POLL_INTERVAL_SECONDS="1")
    assert result.code == 0, result.stdout
    assert result.summary["polls"] >= 3  # the last ones find nothing left to try
    posted = [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)]
    assert posted == [first, second]
    for bead in (first, second):
        assert api.get(bead)["status"] == "open"
        busy = [note for note in notes_of(api, bead) if note.startswith("agent busy")]
        assert len(busy) == 1, notes_of(api, bead)
        assert len([n for n in notes_of(api, bead) if n.startswith("auto-dispatcher claimed")]) == 1
    # A 409 ends its poll: the next bead waits for the next poll, not the same lock hold.
    steps = [
        e["event"]
        for e in result.events
        if e["event"] in ("lock.acquired", "claim.done", "dispatch.agent_busy", "lock.released")
    ]
    assert steps == ["lock.acquired", "claim.done", "dispatch.agent_busy", "lock.released"] * 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(status=500, json={"error": "no agent-service URL"}),
            "HTTP 500 no agent-service URL",
        ),
        (Reply(status=502, json={"error": "agent service unreachable"}), "HTTP 502"),
        (Reply(status=400, json={"error": "bead has no acceptance criteria"}), "HTTP 400"),
        (Reply(status=302, headers={"Location": "/login"}), "HTTP 302"),
    ],
    ids=["500", "502", "400", "302"],
)
def test_failed_dispatch_reopens_counts_and_exits_1(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, reply: Reply, reason: str
) -> None:
    bead = agent_bead(api)
    beadboard.program(DISPATCH, reply)
    result = run_job("dispatch")
    assert result.code == 1
    assert result.summary["outcome"] == "dispatch_failed"
    state = api.get(bead)
    assert state["status"] == "open"
    assert state["metadata"][ATTEMPTS_KEY] == 1
    assert STAGE_KEY not in state["metadata"]
    last = notes_of(api, bead)[-1]
    assert last.startswith("dispatch failed (attempt 1/3): ")
    assert reason in last
    assert "Traceback" not in result.stderr


NO_JOB_ID = "dispatched: BeadBoard answered HTTP {} without a job id"


@pytest.mark.parametrize(
    ("reply", "comment"),
    [
        (Reply(status=200, json={"job_id": "job-9"}), "dispatched: job=job-9 ("),
        (Reply(status=201, json={"job_id": 42}), "dispatched: job=42 ("),
        (Reply(status=202), NO_JOB_ID.format(202)),
        (Reply(status=200, json={"status": "queued"}), NO_JOB_ID.format(200)),
        (Reply(status=200, json={"job_id": "  "}), NO_JOB_ID.format(200)),
        (Reply(status=200, body="<html>oops</html>"), NO_JOB_ID.format(200)),
    ],
    ids=["200", "201-numeric-job-id", "202-empty-body", "200-no-job-id", "200-blank", "200-html"],
)
def test_any_2xx_is_dispatched_and_never_sent_again(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, reply: Reply, comment: str
) -> None:
    bead = agent_bead(api, metadata={ATTEMPTS_KEY: 1})
    beadboard.set_handler(DISPATCH, lambda request: reply)
    window = run_job("dispatch", DISPATCH_WINDOW_SECONDS="3", POLL_INTERVAL_SECONDS="0.5")
    assert window.code == 0, window.stdout
    assert window.summary["outcome"] == "dispatched"
    assert window.summary["dispatched"] == [bead]
    assert window.summary["polls"] >= 2
    assert run_job("dispatch").code == 0
    assert len(beadboard.requests_to(DISPATCH)) == 1
    state = api.get(bead)
    assert state["status"] == "in_progress"
    assert state.get("metadata", {}) == {}  # stage cleared, the failed attempt forgotten
    [text] = comments_of(api, bead)
    assert text.startswith(comment), text
    assert not any(note.startswith("dispatch failed") for note in notes_of(api, bead))


@pytest.mark.parametrize(
    ("reply", "reason"),
    [(Reply(delay=4), "timeout (ReadTimeout)"), (Reply(drop=True), "RemoteProtocolError")],
    ids=["timeout", "dropped"],
)
def test_no_answer_after_sending_is_never_sent_again(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, reply: Reply, reason: str
) -> None:
    bead = agent_bead(api)
    beadboard.program(DISPATCH, reply)
    first = run_job("dispatch")
    assert first.code == 1
    assert first.summary["outcome"] == "dispatch_unknown"
    state = api.get(bead)
    assert state["status"] == "in_progress"
    assert state["metadata"][STAGE_KEY] == "sending"
    assert comments_of(api, bead)[-1].startswith(f"dispatch outcome unknown: {reason}")
    assert run_job("dispatch").code == 0
    assert len(beadboard.requests_to(DISPATCH)) == 1


def test_the_nth_failure_blocks_the_bead_and_stops_retrying(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=502, json={"error": "down"}))
    codes = [run_job("dispatch", DISPATCH_MAX_ATTEMPTS="3").code for _ in range(5)]
    assert codes == [1, 1, 1, 0, 0]
    state = api.get(bead)
    assert state["status"] == "blocked"
    assert ATTEMPTS_KEY not in state.get("metadata", {})
    notes = notes_of(api, bead)
    failures = [n for n in notes if n.startswith("dispatch failed")]
    assert [n.split(":")[0] for n in failures] == [
        "dispatch failed (attempt 1/3)",
        "dispatch failed (attempt 2/3)",
        "dispatch failed (attempt 3/3)",
    ]
    assert "— blocking" in failures[-1]
    # Once blocked, no more POSTs and no more notes: the original's endless retry is gone.
    assert len(beadboard.requests_to(DISPATCH)) == 3


def test_success_after_a_failure_clears_the_attempt_count(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api, metadata={ATTEMPTS_KEY: 2, "owner_note": "keep me"})
    assert run_job("dispatch").code == 0
    metadata = api.get(bead).get("metadata", {})
    assert ATTEMPTS_KEY not in metadata
    assert metadata["owner_note"] == "keep me"


def test_a_bead_with_unreadable_metadata_is_skipped_and_the_next_is_dispatched(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    # bd accepts any JSON as metadata; a JSON array cannot be a bead's metadata object.
    odd = agent_bead(api, "array metadata", priority=0)
    api.set_fields(odd, metadata=["not", "an", "object"])
    fine = agent_bead(api, "fine", priority=1)
    odd_before = api.get(odd)
    result = run_job("dispatch", DISPATCH_WINDOW_SECONDS="3", POLL_INTERVAL_SECONDS="0.5")
    assert result.code == 0, result.stdout
    assert result.summary["polls"] >= 2
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": fine}]
    skipped = [e for e in result.events if e["event"] == "bead.skipped"]
    assert [(e["bead"], e["level"]) for e in skipped] == [(odd, "warning")]
    assert "metadata" in skipped[0]["reason"]
    assert result.summary["skipped"] == [odd]
    assert api.get(odd) == odd_before
    assert api.get(fine)["status"] == "in_progress"


def test_dry_run_changes_nothing_and_posts_nothing(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    bead = agent_bead(api)
    before = api.all()
    result = run_job("dispatch", "--dry-run")
    assert result.code == 0
    assert result.event("dry_run.would_dispatch")["bead"] == bead
    assert api.all() == before
    assert beadboard.requests_to(DISPATCH) == []
    assert not (fake_bd.db_dir / LOCK_FILE_NAME).exists()


def test_kill_switch_off_touches_nothing(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    agent_bead(api)
    before = api.all()
    result = run_job("dispatch", AUTODISPATCH_ENABLED="false")
    assert result.code == 0
    assert result.event("run.paused")
    assert fake_bd.calls() == []
    assert beadboard.requests == []
    assert api.all() == before


def test_a_bead_taken_by_a_human_meanwhile_is_skipped_for_the_next(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    first = agent_bead(api, "first", priority=0)
    second = agent_bead(api, "second", priority=1)

    # Between the query and the claim a human takes the first bead: emulate with a
    # status hook that reassigns it when BeadBoard is asked whether the agent is busy.
    def reassign(request: object) -> Reply:
        api.set_fields(first, assignee="alice")
        return Reply(json={"busy": False})

    beadboard.set_handler(STATUS, reassign)
    result = run_job("dispatch")
    assert result.code == 0
    assert result.event("claim.skipped")["bead"] == first
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": second}]
    assert api.get(first)["status"] == "open" and api.get(first)["assignee"] == "alice"


def test_a_fresh_database_needs_no_setup_and_gets_no_lock_bead(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    bead = agent_bead(api)
    result = run_job("dispatch")
    assert result.code == 0, result.stdout
    assert result.summary["outcome"] == "dispatched"
    assert api.ids() == [bead]
    assert "create" not in {call["subcommand"] for call in fake_bd.calls()}


def test_a_held_lock_ends_the_poll_without_claiming(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    bead = agent_bead(api)
    before = api.all()
    with lock_held_elsewhere(fake_bd.db_dir):
        result = run_job("dispatch")
    assert result.code == 0, result.stdout
    assert result.summary["outcome"] == "lock_busy"
    assert LOCK_FILE_NAME in result.event("lock.busy")["lock"]
    assert api.all() == before
    assert beadboard.requests_to(DISPATCH) == []
    # Released: the next run dispatches.
    assert run_job("dispatch").summary["outcome"] == "dispatched"
    assert api.get(bead)["status"] == "in_progress"


def test_a_lock_held_by_a_killed_process_is_free_at_once(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    bead = agent_bead(api)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, str(fake_bd.db_dir / LOCK_FILE_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert run_job("dispatch").summary["outcome"] == "lock_busy"
    finally:
        holder.kill()  # SIGKILL: no chance to release anything itself
        holder.wait(timeout=10)
    result = run_job("dispatch")
    assert result.summary["outcome"] == "dispatched"
    assert api.get(bead)["status"] == "in_progress"


@pytest.mark.parametrize(
    ("knob", "value"),
    [("FAKE_BD_FAIL", "query"), ("FAKE_BD_GARBAGE", "query")],
)
def test_bd_failure_exits_1_with_one_log_line_and_no_request(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, knob: str, value: str
) -> None:
    agent_bead(api)
    before = api.all()
    result = run_job("dispatch", **{knob: value})
    assert result.code == 1
    failed = result.event("tick.failed")
    assert failed["kind"] == "BdError"
    assert "Traceback" not in result.stderr
    assert beadboard.requests == []
    assert api.all() == before


def test_a_hung_bd_is_timed_out(api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner) -> None:
    agent_bead(api)
    result = run_job("dispatch", FAKE_BD_HANG_SECONDS="30", BD_TIMEOUT_SECONDS="1")
    assert result.code == 1
    assert "timed out after 1s" in result.event("tick.failed")["error"]


def test_beadboard_down_at_status_check_changes_nothing(api: FakeBd, run_job: JobRunner) -> None:
    agent_bead(api)
    before = api.all()
    result = run_job("dispatch", BEADBOARD_URL="http://127.0.0.1:9")
    assert result.code == 1
    assert result.event("tick.failed")["kind"] == "BeadBoardError"
    assert api.all() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"BEADBOARD_URL": ""}, "BEADBOARD_URL is required for dispatch"),
        ({"BEADBOARD_URL": "beadboard:80"}, "BEADBOARD_URL must be an http:// or https:// URL"),
        ({"DISPATCH_MAX_ATTEMPTS": "0"}, "DISPATCH_MAX_ATTEMPTS"),
        ({"REAPER_THRESHOLD_MINUTES": "soon"}, "REAPER_THRESHOLD_MINUTES"),
        ({"AUTODISPATCH_ENABLED": "maybe"}, "AUTODISPATCH_ENABLED must be true or false"),
        ({"AGENT_ASSIGNEE": "agent OR x"}, "AGENT_ASSIGNEE"),
        ({"AGENT_ASSIGNEE": "none"}, "AGENT_ASSIGNEE must name a user"),
        ({"AGENT_ASSIGNEE": "NULL"}, "AGENT_ASSIGNEE must name a user"),
        ({"HTTP_TIMEOUT_SECONDS": "-1"}, "HTTP_TIMEOUT_SECONDS"),
        ({"BD_BIN": "/nonexistent/bd"}, "BD_BIN '/nonexistent/bd': not found"),
        ({"BEADS_METADATA_FILE": "/nonexistent/metadata.json"}, "BEADS_METADATA_FILE"),
    ],
)
def test_bad_configuration_exits_2_with_one_clear_line(
    api: FakeBd,
    beadboard: BeadBoardStub,
    run_job: JobRunner,
    overrides: dict[str, str],
    message: str,
) -> None:
    agent_bead(api)
    before = api.all()
    result = run_job("dispatch", **overrides)
    assert_refused_config(result, message, beadboard)
    assert api.all() == before


def assert_refused_config(result: JobRun, message: str, beadboard: BeadBoardStub) -> None:
    """Exit 2, one line on stderr naming the problem, nothing asked of BeadBoard."""
    assert result.code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), result.stderr
    assert message in lines[0]
    assert beadboard.requests == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"dolt_mode": "server", "dolt_database": "code"}, "server mode needs dolt_server_host"),
        (
            {
                "dolt_mode": "server",
                "dolt_server_host": "dolt",
                "dolt_database": "code",
                "dolt_server_port": "dolt",
            },
            "dolt_server_port is not a number",
        ),
    ],
    ids=["no-host", "port-not-a-number"],
)
def test_server_mode_metadata_the_lock_cannot_use_is_a_config_error(
    api: FakeBd,
    beadboard: BeadBoardStub,
    run_job: JobRunner,
    tmp_path: Path,
    metadata: dict[str, str],
    message: str,
) -> None:
    agent_bead(api)
    before = api.all()
    source = tmp_path / "mounted-metadata.json"
    source.write_text(json.dumps(metadata))
    result = run_job("dispatch", BEADS_METADATA_FILE=str(source))
    assert result.code == 2, result.stdout
    assert_refused_config(result, message, beadboard)
    assert api.all() == before


@pytest.mark.parametrize(
    "content",
    [
        {"backend": "dolt", "dolt_mode": "embedded", "dolt_database": "code"},
        # Server mode, Dolt unreachable: an idle run never asks for the lock, so it is fine.
        {
            "backend": "dolt",
            "dolt_mode": "server",
            "dolt_server_host": "127.0.0.1",
            "dolt_server_port": 9,
            "dolt_database": "code",
        },
    ],
    ids=["embedded", "server-idle"],
)
def test_metadata_file_is_copied_into_the_beads_dir(
    api: FakeBd, run_job: JobRunner, fake_bd: FakeBdEnv, content: dict[str, object]
) -> None:
    source = fake_bd.db_dir.parent / "mounted-metadata.json"
    source.write_text(json.dumps(content))
    result = run_job("dispatch", BEADS_METADATA_FILE=str(source))
    assert result.code == 0, result.stderr
    assert result.summary["outcome"] == "queue_empty"
    assert json.loads((fake_bd.db_dir / "metadata.json").read_text()) == content
