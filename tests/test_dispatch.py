"""The dispatcher tick, end to end through its CLI, against the fake bd and the BeadBoard stub."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from jobs.dispatch import ATTEMPTS_KEY
from jobs.lock import LOCK_BEAD_ID
from tests.conftest import JobRunner
from tests.support.beadboard_stub import BeadBoardStub, Reply
from tests.support.fake_bd import FakeBd
from tests.support.fixtures import FakeBdEnv

STATUS = "/api/agent-status"
DISPATCH = "/api/agent-dispatch"
NOW = datetime.now(UTC).replace(microsecond=0)


def seed_lock(api: FakeBd) -> None:
    """What the first dispatcher run on a database leaves behind."""
    api.create(
        "auto-dispatch lock",
        issue_id=LOCK_BEAD_ID,
        status="closed",
        priority=4,
        issue_type="chore",
    )


def agent_bead(api: FakeBd, title: str = "task", **fields: object) -> str:
    values: dict[str, object] = {"assignee": "agent", "acceptance": "it works", "priority": 2}
    values.update(fields)
    return api.create(title, **values)  # type: ignore[arg-type]


def notes_of(api: FakeBd, bead_id: str) -> list[str]:
    return str(api.get(bead_id).get("notes", "")).splitlines()


@pytest.fixture
def api(fake_bd: FakeBdEnv) -> FakeBd:
    seed_lock(fake_bd.api)
    return fake_bd.api


def test_dispatches_the_eligible_bead_and_notes_each_step(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    result = run_job("dispatch")
    assert result.code == 0, result.stderr
    assert result.summary["outcome"] == "dispatched"
    state = api.get(bead)
    assert state["status"] == "in_progress"
    assert state["assignee"] == "agent"
    claimed, dispatched = notes_of(api, bead)
    assert claimed.startswith("auto-dispatcher claimed at 20")
    assert dispatched.startswith("dispatched: job=job-1 ")
    assert [(r.method, r.path) for r in beadboard.requests] == [("GET", STATUS), ("POST", DISPATCH)]
    assert beadboard.requests_to(DISPATCH)[0].json == {"taskId": bead}
    # The lock is free again, and closed, for the next run.
    lock = api.get(LOCK_BEAD_ID)
    assert (lock["status"], lock.get("assignee", "")) == ("closed", "")


def test_empty_queue_makes_no_http_request(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner, fake_bd: FakeBdEnv
) -> None:
    api.create("a human's bead", assignee="alice", acceptance="x")
    result = run_job("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "queue_empty"
    assert beadboard.requests == []
    assert [call["subcommand"] for call in fake_bd.calls()] == ["query"]


def test_beads_without_acceptance_criteria_are_not_eligible(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    blank = agent_bead(api, acceptance="   \n")
    missing = api.create("no criteria", assignee="agent")
    before = api.all()
    result = run_job("dispatch")
    assert result.code == 0
    assert result.event("queue.read")["skipped_no_acceptance"] == sorted([blank, missing]) or (
        set(result.event("queue.read")["skipped_no_acceptance"]) == {blank, missing}
    )
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
    capped = api.query("assignee=agent AND status=open")
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
    state = api.get(bead)
    assert state["status"] == "open"
    assert ATTEMPTS_KEY not in state.get("metadata", {})
    assert notes_of(api, bead)[-1].startswith("agent busy (Agent is busy); back to open")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(status=500, json={"error": "no agent-service URL"}),
            "HTTP 500 no agent-service URL",
        ),
        (Reply(status=502, json={"error": "agent service unreachable"}), "HTTP 502"),
        (Reply(status=400, json={"error": "bead has no acceptance criteria"}), "HTTP 400"),
        (Reply(status=200, json={"status": "queued"}), "HTTP 200 without job_id"),
        (Reply(status=200, body="<html>oops</html>"), "HTTP 200 without job_id"),
    ],
    ids=["500", "502", "400", "200-no-job", "200-not-json"],
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
    last = notes_of(api, bead)[-1]
    assert last.startswith("dispatch failed (attempt 1/3): ")
    assert reason in last
    assert "Traceback" not in result.stderr


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
    assert state["metadata"]["auto_dispatch_stage"] == "sending"
    assert notes_of(api, bead)[-1].startswith(f"dispatch outcome unknown: {reason}")
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


def test_dry_run_changes_nothing_and_posts_nothing(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    before = api.all()
    result = run_job("dispatch", "--dry-run")
    assert result.code == 0
    assert result.event("dry_run.would_dispatch")["bead"] == bead
    assert api.all() == before
    assert beadboard.requests_to(DISPATCH) == []


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


def test_first_run_creates_the_lock_then_the_next_run_dispatches(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(fake_bd.api)
    first = run_job("dispatch")
    assert first.code == 0
    assert first.summary["outcome"] == "lock_busy"
    assert first.event("lock.created")
    lock = fake_bd.api.get(LOCK_BEAD_ID)
    assert (lock["status"], lock.get("assignee", "")) == ("closed", "")
    assert fake_bd.api.get(bead)["status"] == "open"
    second = run_job("dispatch")
    assert second.summary["outcome"] == "dispatched"


def test_a_held_lock_ends_the_run_without_claiming(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    api.set_fields(
        LOCK_BEAD_ID,
        assignee="autodispatch-run-other",
        status="in_progress",
        updated_at=datetime.now(UTC) - timedelta(seconds=30),  # fresh at test time, not import time
    )
    result = run_job("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "lock_busy"
    assert api.get(bead)["status"] == "open"
    assert beadboard.requests_to(DISPATCH) == []


def test_a_stale_lock_is_released_with_a_note_and_taken(
    api: FakeBd, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    bead = agent_bead(api)
    api.set_fields(
        LOCK_BEAD_ID,
        assignee="autodispatch-run-dead",
        status="in_progress",
        updated_at=NOW - timedelta(minutes=20),
    )
    result = run_job("dispatch")
    assert result.code == 0
    assert result.event("lock.stale_released")["holder"] == "autodispatch-run-dead"
    assert api.get(bead)["status"] == "in_progress"
    assert "stale dispatch lock held by autodispatch-run-dead" in api.get(LOCK_BEAD_ID)["notes"]


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
    before = api.all()
    result = run_job("dispatch", **overrides)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), result.stderr
    assert message in lines[0]
    assert beadboard.requests == []
    assert api.all() == before


def test_metadata_file_is_copied_into_the_beads_dir(
    api: FakeBd, run_job: JobRunner, fake_bd: FakeBdEnv, tmp_path: object
) -> None:
    source = fake_bd.db_dir.parent / "mounted-metadata.json"
    content = {"backend": "dolt", "dolt_mode": "server", "dolt_database": "code"}
    source.write_text(json.dumps(content))
    result = run_job("dispatch", BEADS_METADATA_FILE=str(source))
    assert result.code == 0, result.stderr
    assert json.loads((fake_bd.db_dir / "metadata.json").read_text()) == content
