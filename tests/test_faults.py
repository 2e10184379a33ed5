"""Fault injection (fake bd + BeadBoard stub): every fault of the world gives one clear error
line, the right exit code, the right state for the bead in hand, and changes nothing else.

tests/test_dispatch.py already checks the notes each failed POST leaves; these tests add
what an operator relies on when something breaks: exactly one `level=error` JSON line that
names the fault, no traceback, and a database in which only the expected bead moved.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.protocol import ATTEMPTS_KEY, STAGE_KEY
from localservices.beadboard import BeadBoardStub, Reply
from manifests.mocks import render_program
from pods.process import JobRun
from tests.conftest import (
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


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def bystanders(api: FakeBd) -> None:
    """Beads a tick must never touch, whatever goes wrong."""
    api.create("a human's open bead", assignee="alice", acceptance="x")
    api.create("agent bead without criteria", assignee="agent")
    api.create("agent at work", assignee="agent", status="in_progress", acceptance="x")
    api.create("done", assignee="agent", status="closed", acceptance="x")


def snapshot(api: FakeBd) -> dict[str, dict[str, Any]]:
    return {bead["id"]: bead for bead in api.all()}


def error_lines(run: JobRun) -> list[dict[str, Any]]:
    # Every stdout line is a JSON object: json.loads fails the test otherwise.
    return [event for event in run.events if event["level"] == "error"]


def warning_lines(run: JobRun) -> list[dict[str, Any]]:
    return [event for event in run.events if event["level"] == "warning"]


def error_text(event: dict[str, Any]) -> str:
    return str(event.get("error") or event.get("reason") or "")


def server_mode_metadata(directory: Path, port: int) -> Path:
    """A mounted metadata.json naming a Dolt server nobody answers on."""
    path = directory / "server-metadata.json"
    path.write_text(
        json.dumps(
            {
                "backend": "dolt",
                "dolt_mode": "server",
                "dolt_server_host": "127.0.0.1",
                "dolt_server_port": port,
                "dolt_database": "code",
            }
        ),
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Fault:
    """One injected fault and what the run must do about it.

    bead: "unchanged", "failed" (back to open, attempt 1 counted, failure noted),
    "busy" (back to open, not counted), "dispatched" (BeadBoard took it: in_progress,
    stage cleared, the dispatch commented), "unknown" (the request went out and no answer
    came back: stays in_progress with stage=sending, never sent again) or "unrecorded"
    (sent and taken, but bd failed recording it: stays at stage=sending, never resent).
    warning: a fragment of the one `bead.skipped` warning the run must log, if any.
    """

    id: str
    error: str | None  # a fragment of the one error line; None = no error line at all
    exit_code: int
    bead: str
    dispatch_reply: Reply | None = None
    status_reply: Reply | None = None
    env: dict[str, str] = field(default_factory=dict)
    refused_post: bool = False  # BeadBoard's POST hits a closed port
    db_missing: bool = False  # BEADS_DB is a directory with no database
    lock_held: bool = False  # another live run holds the dispatch lock
    lock_unreachable: bool = False  # server mode, and the Dolt server refuses connections
    real_bd_db_error: bool = False  # bd answers as the real one does for an unopenable --db
    posts: int = 0
    warning: str | None = None


FAST_HTTP = {"HTTP_TIMEOUT_SECONDS": "1"}
HANG = {"FAKE_BD_HANG_SECONDS": "30", "BD_TIMEOUT_SECONDS": "1"}

DISPATCH_FAULTS: tuple[Any, ...] = (
    Fault(
        "post-500",
        "HTTP 500 no agent-service URL",
        1,
        "failed",
        Reply(status=500, json={"error": "no agent-service URL"}),
        posts=1,
    ),
    Fault(
        "post-502",
        "HTTP 502 agent service unreachable",
        1,
        "failed",
        Reply(status=502, json={"error": "agent service unreachable"}),
        posts=1,
    ),
    Fault(
        "post-400",
        "HTTP 400 bead has no acceptance criteria",
        1,
        "failed",
        Reply(status=400, json={"error": "bead has no acceptance criteria"}),
        posts=1,
    ),
    # 409 is BeadBoard saying "busy", not a fault: no error line, exit 0, not counted.
    Fault(
        "post-409",
        None,
        0,
        "busy",
        Reply(status=409, json={"error": "Agent is busy"}),
        posts=1,
    ),
    Fault("post-refused", "connection failed", 1, "failed", refused_post=True),
    Fault(
        "post-timeout",
        "timeout (ReadTimeout)",
        1,
        "unknown",
        Reply(delay=3),
        env=FAST_HTTP,
        posts=1,
        warning="dispatch outcome unknown",
    ),
    Fault(
        "post-slow-body",
        "timeout (ReadTimeout)",
        1,
        "unknown",
        Reply(stall=3, json={"job_id": "job-late"}),
        env=FAST_HTTP,
        posts=1,
        warning="dispatch outcome unknown",
    ),
    Fault(
        "post-500-html",
        "HTTP 500",
        1,
        "failed",
        Reply(status=500, body="<html>Internal Server Error</html>"),
        posts=1,
    ),
    # Any 2xx is BeadBoard taking the bead, whatever its body: no fault, never resent.
    Fault(
        "post-200-invalid-json",
        None,
        0,
        "dispatched",
        Reply(status=200, body='{"job_id": "job-1"'),
        posts=1,
    ),
    Fault(
        "post-200-no-job-id",
        None,
        0,
        "dispatched",
        Reply(status=200, json={"status": "queued"}),
        posts=1,
    ),
    Fault(
        "post-202-empty",
        None,
        0,
        "dispatched",
        Reply(status=202),
        posts=1,
    ),
    # The status check fails before anything is claimed: the bead stays as it was.
    Fault("status-500", "GET /api/agent-status: HTTP 500", 1, "unchanged", status_reply=Reply(500)),
    Fault(
        "status-invalid-json",
        "answer has no boolean 'busy'",
        1,
        "unchanged",
        status_reply=Reply(body="busy"),
    ),
    Fault(
        "status-busy-not-bool",
        "answer has no boolean 'busy'",
        1,
        "unchanged",
        status_reply=Reply(json={"busy": "no"}),
    ),
    Fault(
        "status-timeout",
        "GET /api/agent-status: timeout",
        1,
        "unchanged",
        status_reply=Reply(delay=3),
        env=FAST_HTTP,
    ),
    Fault(
        "status-slow-body",
        "GET /api/agent-status: timeout",
        1,
        "unchanged",
        status_reply=Reply(stall=3, json={"busy": False}),
        env=FAST_HTTP,
    ),
    # bd faults, wherever in the tick they hit.
    Fault("bd-query-exit-1", "bd query exited 1", 1, "unchanged", env={"FAKE_BD_FAIL": "query"}),
    # The claim fails, and so does handing the bead back: it is left for the next run.
    Fault(
        "bd-update-exit-1",
        "bd update exited 1",
        1,
        "unchanged",
        env={"FAKE_BD_FAIL": "update"},
    ),
    Fault("bd-hang-all", "bd query timed out after 1s", 1, "unchanged", env=HANG),
    Fault(
        "bd-hang-on-update",
        "bd update timed out after 1s",
        1,
        "unchanged",
        env={**HANG, "FAKE_BD_HANG_ON": "update"},
    ),
    Fault(
        "bd-query-truncated-json",
        "bd query printed invalid JSON",
        1,
        "unchanged",
        env={"FAKE_BD_GARBAGE": "query"},
    ),
    # BeadBoard took the bead; recording it fails: it stays "sending", never sent again.
    Fault(
        "bd-comment-exit-1",
        "bd comments exited 1",
        1,
        "unrecorded",
        env={"FAKE_BD_FAIL": "comments"},
        posts=1,
    ),
    Fault(
        "bd-hang-on-comment",
        "bd comments timed out after 1s",
        1,
        "unrecorded",
        env={**HANG, "FAKE_BD_HANG_ON": "comments"},
        posts=1,
    ),
    # The dispatch lock: held by another run is no fault; its service unreachable is one.
    Fault("lock-held", None, 0, "unchanged", lock_held=True),
    Fault(
        "lock-service-unreachable",
        "cannot connect to Dolt at 127.0.0.1",
        1,
        "unchanged",
        lock_unreachable=True,
    ),
    # What the real bd 1.0.2 prints for a --db it cannot open (recorded, replayed by a script).
    Fault(
        "bd-db-unopenable",
        "bd query exited 1: failed to open database: embeddeddolt: database name must not be",
        1,
        "unchanged",
        real_bd_db_error=True,
    ),
    pytest.param(
        Fault("bd-db-missing", "no beads database found", 1, "unchanged", db_missing=True),
        id="bd-db-missing",
    ),
    Fault("bd-every-call-fails", "injected failure", 1, "unchanged", env={"FAKE_BD_FAIL": "*"}),
)


# Recorded from bd 1.0.2 run with --db on an empty directory (embedded mode).
REAL_BD_OPEN_FAILURE_STDOUT = (
    json.dumps(
        {
            "error": "failed to open database: embeddeddolt: database name must not be empty "
            '(caller should default to "beads")'
        },
        indent=2,
    )
    + "\n"
)
REAL_BD_OPEN_FAILURE_STDERR = (
    "warning: no beads configuration found in /tmp; database name may default incorrectly\n"
)


def real_bd_open_failure(directory: Path) -> Path:
    """A bd that fails exactly as bd 1.0.2 does when --db names a directory with no database."""
    (directory / "bd.out").write_text(REAL_BD_OPEN_FAILURE_STDOUT, encoding="utf-8")
    (directory / "bd.err").write_text(REAL_BD_OPEN_FAILURE_STDERR, encoding="utf-8")
    script = directory / "bd-cannot-open"
    script.write_text(
        f"#!/bin/sh\ncat '{directory}/bd.out'\ncat '{directory}/bd.err' >&2\nexit 1\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def cases(faults: tuple[Any, ...]) -> list[Any]:
    """Each Fault as a pytest param named by its id (known gaps come pre-wrapped)."""
    return [f if not isinstance(f, Fault) else pytest.param(f, id=f.id) for f in faults]


@pytest.mark.parametrize("fault", cases(DISPATCH_FAULTS))
def test_dispatch_fault_one_error_line_right_state_nothing_else(
    fault: Fault,
    fake_bd: FakeBdEnv,
    beadboard: BeadBoardStub,
    run_job: JobRunner,
    tmp_path: Path,
) -> None:
    api = fake_bd.api
    bystanders(api)
    bead = agent_bead(api, "the one in hand", priority=0)
    before = snapshot(api)
    if fault.dispatch_reply is not None:
        beadboard.program(DISPATCH, fault.dispatch_reply)
    if fault.status_reply is not None:
        beadboard.program(STATUS, fault.status_reply)
    env = dict(fault.env)
    if fault.refused_post:
        # Slots from /health, so BeadBoard is asked nothing before the POST that fails.
        env["AGENT_HEALTH_URL"] = f"{beadboard.url}/health"
        env["BEADBOARD_URL"] = f"http://127.0.0.1:{closed_port()}"
    if fault.db_missing:
        env["BEADS_DB"] = str(tmp_path / "no-database-here")
    if fault.real_bd_db_error:
        env["BD_BIN"] = str(real_bd_open_failure(tmp_path))
    if fault.lock_unreachable:
        env["BEADS_METADATA_FILE"] = str(server_mode_metadata(tmp_path, closed_port()))

    with contextlib.ExitStack() as stack:
        if fault.lock_held:
            stack.enter_context(lock_held_elsewhere(fake_bd.db_dir))
        result = run_job("dispatch", **env)

    assert result.code == fault.exit_code, result.stdout + result.stderr
    assert result.stderr == "", "a fault of the world is logged, never a traceback"
    errors = error_lines(result)
    if fault.error is None:
        assert errors == []
    else:
        assert len(errors) == 1, errors
        assert fault.error in error_text(errors[0]), errors[0]
        assert "\n" not in error_text(errors[0])
    skipped = [w for w in warning_lines(result) if w["event"] == "bead.skipped"]
    if fault.warning is None:
        assert warning_lines(result) == []
    else:
        assert [w["bead"] for w in skipped] == [bead]
        assert fault.warning in error_text(skipped[0]), skipped[0]
    assert result.summary["exit_code"] == fault.exit_code
    assert len(beadboard.requests_to(DISPATCH)) == fault.posts
    if fault.lock_held:
        assert result.summary["outcome"] == "lock_busy"
    assert lock_is_free(fake_bd.db_dir)

    after = snapshot(api)
    expected = dict(before)
    state = after[bead]
    if fault.bead == "unchanged":
        assert state == before[bead]
    elif fault.bead in ("unknown", "unrecorded"):
        assert state["status"] == "in_progress"
        assert state["metadata"][STAGE_KEY] == "sending"
        assert ATTEMPTS_KEY not in state.get("metadata", {})
        if fault.bead == "unknown":
            assert comments_of(api, bead)[-1].startswith("dispatch outcome unknown: ")
        else:
            assert comments_of(api, bead) == []
        expected[bead] = state
    elif fault.bead == "dispatched":
        assert state["status"] == "in_progress"
        assert STAGE_KEY not in state.get("metadata", {})
        assert comments_of(api, bead)[-1].startswith("dispatched: BeadBoard answered HTTP 20"), (
            comments_of(api, bead)
        )
        expected[bead] = state
    else:
        assert state["status"] == "open"
        assert STAGE_KEY not in state.get("metadata", {})
        last = notes_of(api, bead)[-1]
        if fault.bead == "failed":
            assert state["metadata"][ATTEMPTS_KEY] == 1
            assert last.startswith("dispatch failed (attempt 1/3): ")
            assert fault.error is not None and fault.error in last
        else:
            assert ATTEMPTS_KEY not in state.get("metadata", {})
            assert last.startswith("agent busy (Agent is busy); back to open")
        expected[bead] = state
    # Everything else — the bystanders — as it was, and nothing new was created.
    assert after == expected


def stale_bead(api: FakeBd) -> str:
    return api.create(
        "stuck for an hour",
        assignee="agent",
        status="in_progress",
        acceptance="x",
        updated_at=NOW - timedelta(hours=1),
    )


# The reaper logs one line per bead it could not handle; a failed write fails the run.

REAP_FAULTS: tuple[Any, ...] = (
    Fault("reap-query-exit-1", "bd query exited 1", 1, "unchanged", env={"FAKE_BD_FAIL": "query"}),
    # bd show fails for *any* lookup problem: the bead is skipped, never judged gone.
    Fault(
        "reap-show-exit-1",
        None,
        0,
        "unchanged",
        env={"FAKE_BD_FAIL": "show"},
        warning="cannot re-read it: bd show exited 1",
    ),
    Fault(
        "reap-show-truncated-json",
        None,
        0,
        "unchanged",
        env={"FAKE_BD_GARBAGE": "show"},
        warning="cannot re-read it: bd show printed invalid JSON",
    ),
    pytest.param(
        Fault(
            "reap-update-exit-1",
            "bd update exited 1",
            1,
            "unchanged",
            env={"FAKE_BD_FAIL": "update"},
        ),
        id="reap-update-exit-1",
    ),
    pytest.param(
        Fault(
            "reap-hang-on-update",
            "bd update timed out after 1s",
            1,
            "unchanged",
            env={**HANG, "FAKE_BD_HANG_ON": "update"},
        ),
        id="reap-hang-on-update",
    ),
    Fault(
        "reap-truncated-json",
        "bd query printed invalid JSON",
        1,
        "unchanged",
        env={"FAKE_BD_GARBAGE": "query"},
    ),
    Fault(
        "reap-db-unopenable",
        "bd query exited 1: failed to open database",
        1,
        "unchanged",
        real_bd_db_error=True,
    ),
    Fault(
        "reap-lock-service-unreachable",
        "cannot connect to Dolt at 127.0.0.1",
        1,
        "unchanged",
        lock_unreachable=True,
    ),
)


@pytest.mark.parametrize("fault", cases(REAP_FAULTS))
def test_reap_fault_one_line_and_nothing_changed(
    fault: Fault, fake_bd: FakeBdEnv, run_job: JobRunner, tmp_path: Path
) -> None:
    api = fake_bd.api
    bystanders(api)
    stuck = stale_bead(api)
    before = snapshot(api)
    env = dict(fault.env, AUTODISPATCH_NOW=NOW.isoformat())
    if fault.real_bd_db_error:
        env["BD_BIN"] = str(real_bd_open_failure(tmp_path))
    if fault.lock_unreachable:
        env["BEADS_METADATA_FILE"] = str(server_mode_metadata(tmp_path, closed_port()))
    result = run_job("reap", **env)
    assert result.code == fault.exit_code, result.stdout
    assert result.stderr == ""
    errors = error_lines(result)
    if fault.error is None:
        assert errors == []
    else:
        assert len(errors) == 1, errors
        assert fault.error in error_text(errors[0])
    warnings = warning_lines(result)
    if fault.warning is None:
        assert warnings == []
    else:
        assert [(w["event"], w["bead"]) for w in warnings] == [("bead.skipped", stuck)]
        assert fault.warning in error_text(warnings[0]), warnings[0]
    # The stale bead is still in_progress: the next reaper run blocks it.
    assert snapshot(api) == before
    assert lock_is_free(fake_bd.db_dir)


@pytest.mark.parametrize(
    ("knob", "code"), [("update", 1), ("show", 0)], ids=["update-fails", "show-fails"]
)
def test_one_bead_failing_to_reap_does_not_stop_the_others(
    fake_bd: FakeBdEnv, run_job: JobRunner, knob: str, code: int
) -> None:
    api = fake_bd.api
    first, second = stale_bead(api), stale_bead(api)
    before = snapshot(api)
    # bd refuses every call of one kind: each stale bead is still tried and reported.
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat(), FAKE_BD_FAIL=knob)
    assert result.code == code, result.stdout
    tried = bd_argvs(fake_bd, knob)
    assert sorted(argv[argv.index(knob) + 1] for argv in tried) == sorted([first, second])
    # A failed show is a warning (the bead is simply skipped); a failed write is an error.
    reported = warning_lines(result) if knob == "show" else error_lines(result)
    assert sorted(line["bead"] for line in reported) == sorted([first, second])
    assert all(f"bd {knob} exited 1" in error_text(line) for line in reported)
    assert sorted(result.summary["skipped"]) == sorted([first, second])
    assert snapshot(api) == before


# -- gaps found by this suite, fixed: each asserts the promise ---------------------------------


def test_a_timed_out_post_that_beadboard_accepted_is_not_sent_twice(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    agent_bead(api)
    # BeadBoard started the job and answered 200, but the body arrived after our timeout.
    beadboard.program(DISPATCH, Reply(stall=3, json={"job_id": "job-started"}))
    run_job("dispatch", **FAST_HTTP)
    run_job("dispatch", **FAST_HTTP)
    assert len(beadboard.requests_to(DISPATCH)) == 1


def test_garbled_bd_output_while_claiming_hands_the_bead_back_and_frees_the_lock(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    bead = agent_bead(api)
    # Every update lands, then bd prints half a document: the claim may or may not have.
    result = run_job("dispatch", FAKE_BD_GARBAGE="update")
    assert result.code == 1
    state = api.get(bead)
    assert state["status"] == "open"
    assert STAGE_KEY not in state.get("metadata", {})
    assert notes_of(api, bead)[-1].startswith("not dispatched: bd failed while claiming it")
    assert beadboard.requests_to(DISPATCH) == []
    assert lock_is_free(fake_bd.db_dir)


def test_bd_printing_bytes_that_are_not_utf8_is_one_skipped_row_not_a_crash(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner, tmp_path: Path
) -> None:
    agent_bead(fake_bd.api)
    bad = tmp_path / "bd-latin1"
    bad.write_text('#!/bin/sh\nprintf \'[{"id": "caf\\351"}]\'\n', encoding="ascii")
    bad.chmod(0o755)
    result = run_job("dispatch", BD_BIN=str(bad))
    assert result.code == 0, result.stdout
    assert result.stderr == ""
    assert error_lines(result) == []
    [skipped] = warning_lines(result)
    assert (skipped["event"], skipped["bead"]) == ("bead.skipped", "caf\ufffd")
    assert beadboard.requests == []


# -- secrets -----------------------------------------------------------------------------------

DOLT_PASSWORD = "dolt-pw-" + secrets.token_hex(12)
BEARER = "bbt_" + secrets.token_urlsafe(24)
SECRET_ENV = {
    "BEADS_DOLT_PASSWORD": DOLT_PASSWORD,
    # What the original passed to the pod; a job must never echo it even if it is set.
    "API_BEARER_TOKEN": BEARER,
    "BEADBOARD_TOKEN": f"Bearer {BEARER}",
}


def leaks(text: str) -> list[str]:
    return [
        name for name, value in (("password", DOLT_PASSWORD), ("token", BEARER)) if value in text
    ]


def test_no_secret_in_logs_notes_requests_or_manifests(
    fake_bd: FakeBdEnv,
    beadboard: BeadBoardStub,
    run_job: JobRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = fake_bd.api
    agent_bead(api, "dispatched", priority=0)
    agent_bead(api, "fails", priority=1)
    stale_bead(api)
    beadboard.program(
        DISPATCH, Reply(json={"job_id": "job-1"}), Reply(status=502, json={"error": "down"})
    )
    runs = [
        run_job("dispatch", **SECRET_ENV),
        run_job("dispatch", **SECRET_ENV),
        run_job("reap", **SECRET_ENV),
        run_job("dispatch", FAKE_BD_FAIL="query", **SECRET_ENV),
        run_job("dispatch", HTTP_TIMEOUT_SECONDS="soon", **SECRET_ENV),  # config error
        run_job("dispatch", "--dry-run", **SECRET_ENV),
    ]
    assert [run.code for run in runs] == [0, 1, 0, 1, 2, 0]
    for run in runs:
        assert leaks(run.stdout + run.stderr) == []
    notes = "\n".join(str(bead.get("notes", "")) for bead in api.all())
    assert "dispatch failed" in notes  # the failure path wrote notes, and they are clean
    assert leaks(notes) == []
    comments = "\n".join(comment["text"] for bead in api.ids() for comment in api.comments(bead))
    assert "dispatched: job=job-1" in comments
    assert leaks(comments) == []
    # BeadBoard's agent routes need no token: none is sent, in headers or body.
    for request in beadboard.requests:
        assert leaks(json.dumps(request.headers) + request.text) == []
        assert "authorization" not in {name.lower() for name in request.headers}

    # The program must not pick secrets up from its own environment either.
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    rendered = render_program(
        {"doltPasswordSecretName": "dolt-credentials", "doltPasswordSecretKey": "password"}
    )
    manifests = json.dumps([r.inputs for r in rendered.resources], sort_keys=True)
    assert leaks(manifests) == []
    # The password reaches the pod only as a reference to its Secret.
    assert re.search(
        r'"secretKeyRef": \{"key": "password", "name": "dolt-credentials"\}', manifests
    )
