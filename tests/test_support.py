"""Quick checks of the test doubles themselves: the bd fake and the BeadBoard stub."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from jobs.beads import BdClient, BdError, BdRejected
from localservices.beadboard import (
    AGENT_DISPATCH,
    AGENT_STATUS,
    HEALTH,
    BeadBoardStub,
    RecordedRequest,
    Reply,
)
from tests.support.fake_bd import QueryError, _blank_issue, run_query

if TYPE_CHECKING:  # a runtime import would beat pytest's assertion rewriting to it
    from tests.support.fixtures import FakeBdEnv

pytest_plugins = ["tests.support.fixtures"]


def bd(
    env: FakeBdEnv, *args: str, actor: str = "agent", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the fake through its `bd` shim, the way production code runs real bd."""
    return subprocess.run(
        [str(env.bin), "--db", str(env.db_dir), "--actor", actor, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **env.env(**(extra_env or {}))},
    )


# --------------------------------------------------------------------------- fake bd


def test_query_caps_at_50_by_default_and_limit_0_lifts_it(fake_bd: FakeBdEnv) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(55):
        fake_bd.api.create(f"bead {n}", priority=n % 3, created_at=base + timedelta(minutes=n))
    fake_bd.api.create("done", status="closed")

    capped = json.loads(bd(fake_bd, "query", "status=open", "--json").stdout)
    unlimited = json.loads(bd(fake_bd, "query", "assignee=none", "--limit", "0", "--json").stdout)

    assert len(capped) == 50
    assert len(unlimited) == 55  # closed excluded without --all
    # bd's order: priority ascending, then newest created first.
    keys = [(row["priority"], row["created_at"]) for row in unlimited]
    assert keys == sorted(
        keys, key=lambda key: (key[0], -datetime.fromisoformat(key[1]).timestamp())
    )
    assert {"dependency_count", "dependent_count", "comment_count"} <= set(unlimited[0])


def test_query_all_includes_closed_and_status_mentions_disable_the_default(
    fake_bd: FakeBdEnv,
) -> None:
    fake_bd.api.create("open one")
    fake_bd.api.create("closed one", status="closed")

    assert len(fake_bd.api.query("title=one")) == 1
    assert len(fake_bd.api.query("title=one", include_closed=True)) == 2
    # bd only adds "exclude closed" when the query never mentions status.
    assert len(fake_bd.api.query("status!=blocked")) == 2


def test_claim_is_a_cas_on_assignee_and_idempotent_for_the_same_actor(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("claim me", acceptance="works")

    first = bd(fake_bd, "update", bead, "--claim", "--json")
    again = bd(fake_bd, "update", bead, "--claim", "--json")
    other = bd(fake_bd, "update", bead, "--claim", "--json", actor="someone-else")

    assert first.returncode == 0
    claimed = json.loads(first.stdout)[0]
    assert (claimed["status"], claimed["assignee"]) == ("in_progress", "agent")
    assert "started_at" in claimed
    assert again.returncode == 0  # same actor: success, nothing changes
    assert json.loads(again.stdout)[0]["updated_at"] == claimed["updated_at"]
    assert other.returncode == 1
    assert other.stdout == ""
    assert f"Error claiming {bead}: issue already claimed by agent" in other.stderr


def test_claim_ignores_status_like_real_bd(fake_bd: FakeBdEnv) -> None:
    closed = fake_bd.api.create("closed, unassigned", status="closed")
    blocked = fake_bd.api.create("blocked, mine", status="blocked", assignee="agent")

    assert bd(fake_bd, "update", closed, "--claim").returncode == 0
    assert bd(fake_bd, "update", blocked, "--claim").returncode == 0

    assert fake_bd.api.get(closed)["status"] == "in_progress"  # closed_at is left behind
    assert "closed_at" in fake_bd.api.get(closed)
    assert fake_bd.api.get(blocked)["status"] == "blocked"


def test_concurrent_claims_by_different_actors_have_one_winner(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("contended")
    procs = [
        subprocess.Popen(
            [str(fake_bd.bin), "--db", str(fake_bd.db_dir), "--actor", f"a{n}", "update", bead,
             "--claim"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(4)
    ]  # fmt: skip
    codes = [proc.wait(timeout=30) for proc in procs]

    assert sorted(codes) == [0, 1, 1, 1]
    assert fake_bd.api.get(bead)["assignee"] in {"a0", "a1", "a2", "a3"}


def test_show_not_found_exits_1_with_error_object_on_stdout(fake_bd: FakeBdEnv) -> None:
    result = bd(fake_bd, "show", "bd-nope", "--json")

    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "no issues found matching the provided IDs"}
    assert 'Error fetching bd-nope: no issue found matching "bd-nope"' in result.stderr


def test_update_exits_1_when_nothing_was_updated(fake_bd: FakeBdEnv) -> None:
    result = bd(fake_bd, "update", "bd-nope", "--status", "open", "--json")

    assert result.returncode == 1
    assert result.stdout == ""
    assert 'Error resolving bd-nope: no issue found matching "bd-nope"' in result.stderr


def test_note_appends_a_line_and_bumps_updated_at(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("noted", notes="first", updated_at="2026-01-01T00:00:00Z")

    result = bd(
        fake_bd, "note", bead, "claimed by agent job-1",
        extra_env={"FAKE_BD_NOW": "2026-02-02T10:00:00Z"},
    )  # fmt: skip

    assert result.returncode == 0
    after = fake_bd.api.get(bead)
    assert after["notes"] == "first\nclaimed by agent job-1"
    assert after["updated_at"] == "2026-02-02T10:00:00Z"


def test_update_metadata_and_append_notes_in_one_call(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("meta", metadata={"keep": "me", "drop": 1})

    result = bd(
        fake_bd, "update", bead, "--set-metadata", "job_id=job-7", "--set-metadata", "tries=2",
        "--unset-metadata", "drop", "--append-notes", "dispatched", "--json",
    )  # fmt: skip

    assert result.returncode == 0
    printed = json.loads(result.stdout)[0]
    assert printed["metadata"] == {"job_id": "job-7", "keep": "me", "tries": 2}
    assert printed["notes"] == "dispatched"


def test_fault_knobs_and_call_log(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("knobs")

    failed = bd(fake_bd, "query", "status=open", "--json", extra_env={"FAKE_BD_FAIL": "query"})
    garbage = bd(fake_bd, "show", bead, "--json", extra_env={"FAKE_BD_GARBAGE": "1"})
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [str(fake_bd.bin), "--db", str(fake_bd.db_dir), "query", "status=open"],
            env={**os.environ, "FAKE_BD_HANG_SECONDS": "5"},
            capture_output=True,
            timeout=0.5,
            check=False,
        )

    assert failed.returncode == 1
    assert failed.stdout == ""
    assert garbage.returncode == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.stdout)
    assert [call["subcommand"] for call in fake_bd.calls()] == ["query", "show"]


def test_query_language_quirks_match_bd() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        _row("bd-1", "open", 1, "2026-01-01T00:00:00Z"),
        _row("bd-2", "blocked", 0, "2026-01-02T00:00:00Z"),
        _row("bd-3", "closed", 0, "2026-01-03T00:00:00Z"),
    ]

    either = run_query(rows, "(status=open OR status=blocked) AND priority<=1", now=now)
    assert [row["id"] for row in either] == ["bd-2", "bd-1"]
    assert [row["id"] for row in run_query(rows, "updated<5d", now=now)] == ["bd-2", "bd-1"]
    with pytest.raises(QueryError, match="priority != requires predicate filtering"):
        run_query(rows, "priority!=2", now=now)
    with pytest.raises(QueryError, match="unknown field: acceptance"):
        run_query(rows, "acceptance=x", now=now)


def test_query_values_may_be_quoted_with_backslash_escapes() -> None:
    rows: list[dict[str, Any]] = [
        {**_row("bd-1", "open", 1, "2026-01-01T00:00:00Z"), "assignee": "bot@corp.example"},
        {**_row("bd-2", "open", 1, "2026-01-01T00:00:00Z"), "assignee": "agent"},
        {**_row("bd-3", "open", 1, "2026-01-01T00:00:00Z"), "title": 'say "hi" \\o/'},
    ]

    def ids(expression: str) -> list[str]:
        return [row["id"] for row in run_query(rows, expression)]

    assert ids('assignee="bot@corp.example" AND status=open') == ["bd-1"]
    assert ids('assignee="agent" AND status=open') == ["bd-2"]
    assert ids("assignee='agent'") == ["bd-2"]
    assert ids('title="say \\"hi\\" \\\\o/"') == ["bd-3"]
    with pytest.raises(QueryError, match='unexpected character "@"'):
        run_query(rows, "assignee=bot@corp.example AND status=open")
    with pytest.raises(QueryError, match="unterminated string"):
        run_query(rows, 'assignee="agent')


def test_comments_add_keeps_the_issue_untouched_and_show_lists_them(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("talk", notes="first", updated_at="2026-01-01T00:00:00Z")
    now = {"FAKE_BD_NOW": "2026-02-02T10:00:00.700Z"}

    added = bd(
        fake_bd, "--json", "comments", "add", bead, "--", "-starts with a dash", extra_env=now
    )
    plain = bd(fake_bd, "comments", "add", bead, "second", "--author", "alice")

    assert added.returncode == 0, added.stderr
    printed = json.loads(added.stdout)
    assert set(printed) == {"id", "issue_id", "author", "text", "created_at"}
    assert (printed["issue_id"], printed["author"]) == (bead, "agent")
    assert printed["text"] == "-starts with a dash"
    assert printed["created_at"] == "2026-02-02T10:00:00.7Z"  # in memory: not yet rounded
    assert plain.returncode == 0 and plain.stdout == f"Comment added to {bead}\n"
    shown = json.loads(bd(fake_bd, "show", bead, "--json").stdout)[0]
    # A comment is a row of its own: notes and updated_at are as they were.
    assert (shown["notes"], shown["updated_at"]) == ("first", "2026-01-01T00:00:00Z")
    first, second = shown["comments"]
    assert first == {**printed, "created_at": "2026-02-02T10:00:01Z"}  # DATETIME rounds
    assert (second["author"], second["text"]) == ("alice", "second")
    assert first["id"] != second["id"]
    listed = json.loads(bd(fake_bd, "comments", bead, "--json").stdout)
    assert listed == shown["comments"] == fake_bd.api.comments(bead)
    [row] = fake_bd.api.query("title=talk")
    assert row["comment_count"] == 2 and "comments" not in row


def test_comments_add_errors_like_bd(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("quiet")

    missing = bd(fake_bd, "--json", "comments", "add", "bd-nope", "hello")
    blank = bd(fake_bd, "--json", "comments", "add", bead, "  ")
    no_text = bd(fake_bd, "--json", "comments", "add", bead)
    failed = bd(fake_bd, "comments", "add", bead, "x", extra_env={"FAKE_BD_FAIL": "comments"})
    none = bd(fake_bd, "comments", bead, "--json")

    assert missing.returncode == 1
    assert json.loads(missing.stdout) == {
        "error": 'resolving bd-nope: no issue found matching "bd-nope"'
    }
    assert json.loads(blank.stdout) == {"error": "comment text cannot be empty"}
    assert json.loads(no_text.stdout) == {
        "error": "comment text required (use -f to read from file)"
    }
    assert failed.returncode == 1 and "injected failure for 'comments'" in failed.stderr
    assert json.loads(none.stdout) == []
    assert "comments" not in fake_bd.api.get(bead)
    assert {call["subcommand"] for call in fake_bd.calls()} == {"comments"}


def test_bd_client_reads_and_writes_comments_through_the_fake(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("via the client", updated_at="2026-01-01T00:00:00Z")
    client = BdClient(
        str(fake_bd.bin), fake_bd.db_dir, actor="agent", timeout_seconds=20, env=fake_bd.env()
    )

    client.comment(bead, "dispatched: job=1")
    shown = client.show(bead)

    [comment] = shown.comments
    assert (comment.author, comment.text) == ("agent", "dispatched: job=1")
    assert shown.updated_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert shown.last_activity == comment.created_at > shown.updated_at
    with pytest.raises(BdRejected):
        client.comment("bd-nope", "x")
    with pytest.raises(BdError):
        client.show("bd-nope")


def test_metadata_may_be_any_json_and_then_cannot_be_edited(fake_bd: FakeBdEnv) -> None:
    bead = fake_bd.api.create("odd metadata")
    fake_bd.api.set_fields(bead, metadata=["x"])

    edit = bd(fake_bd, "update", bead, "--set-metadata", "k=v", "--json")

    assert fake_bd.api.get(bead)["metadata"] == ["x"]
    assert json.loads(bd(fake_bd, "query", "has_metadata_key=x", "--json").stdout) == []
    assert edit.returncode == 1
    assert "existing metadata is not a JSON object" in json.loads(edit.stdout)["error"]


def _row(issue_id: str, status: str, priority: int, stamp: str) -> dict[str, Any]:
    row = _blank_issue()
    row.update(id=issue_id, status=status, priority=priority, created_at=stamp, updated_at=stamp)
    return row


# --------------------------------------------------------------------------- BeadBoard stub


def _call(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_stub_defaults_and_records_requests(beadboard: BeadBoardStub) -> None:
    assert _call(beadboard.url + AGENT_STATUS) == (200, {"busy": False})
    assert _call(beadboard.url + AGENT_DISPATCH, "POST", {"taskId": "bd-1"}) == (
        200,
        {"job_id": "job-1"},
    )
    assert _call(beadboard.url + HEALTH) == (
        200,
        {"status": "ok", "busy": False, "active": 0, "queued": 0, "capacity": 1},
    )
    assert _call(beadboard.url + "/nope")[0] == 404

    dispatches = beadboard.requests_to(AGENT_DISPATCH)
    assert [(r.method, r.json) for r in dispatches] == [("POST", {"taskId": "bd-1"})]
    assert len(beadboard.requests) == 4
    beadboard.clear()
    assert beadboard.requests == []


def test_stub_replays_programmed_replies_then_falls_back(beadboard: BeadBoardStub) -> None:
    beadboard.program(
        AGENT_DISPATCH,
        Reply(status=409, json={"error": "Agent is busy"}),
        Reply(status=502, body=b"upstream exploded"),
    )
    beadboard.set_handler(
        AGENT_STATUS, lambda request: Reply(json={"busy": request.query.get("x") == ["1"]})
    )

    assert _call(beadboard.url + AGENT_DISPATCH, "POST", {"taskId": "a"}) == (
        409,
        {"error": "Agent is busy"},
    )
    with pytest.raises(json.JSONDecodeError):
        _call(beadboard.url + AGENT_DISPATCH, "POST", {"taskId": "b"})
    assert _call(beadboard.url + AGENT_DISPATCH, "POST", {"taskId": "c"}) == (
        200,
        {"job_id": "job-1"},
    )
    assert _call(beadboard.url + AGENT_STATUS + "?x=1") == (200, {"busy": True})
    assert beadboard.pending(AGENT_DISPATCH) == 0


def test_stub_delay_stall_and_drop(beadboard: BeadBoardStub) -> None:
    beadboard.program(AGENT_STATUS, Reply(delay=2.0, json={"busy": False}))
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _call(beadboard.url + AGENT_STATUS, timeout=0.3)
    assert time.monotonic() - started < 1.5

    beadboard.program(AGENT_STATUS, Reply(stall=2.0, json={"busy": False}))
    connection = http.client.HTTPConnection("127.0.0.1", beadboard.port, timeout=0.3)
    connection.request("GET", AGENT_STATUS)
    response = connection.getresponse()  # headers arrive promptly...
    assert response.status == 200
    with pytest.raises(TimeoutError):
        response.read()  # ...the body does not
    connection.close()

    beadboard.program(AGENT_DISPATCH, Reply(drop=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        _call(beadboard.url + AGENT_DISPATCH, "POST", {"taskId": "x"})

    seen: list[RecordedRequest] = beadboard.requests
    assert [r.path for r in seen] == [AGENT_STATUS, AGENT_STATUS, AGENT_DISPATCH]
