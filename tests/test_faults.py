"""Fault injection: every fault of the world gives one clear error line, the right exit code,
the right state for the bead in hand, and changes nothing else.

Faults of bd are injected into the memory store (the jobs see a BdError wherever bd would
fail); BeadBoard's answers come from the stub, in process, and the answers that come late or
never (and a refused connection) over a real socket; what bd itself can do wrong (hang, crash,
garbage, advisory noise) is turned into that BdError by BdClient, tested at the end with an
injected runner, or a tiny scripted `bd` where a real process is the point.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub, Reply
from devtools.manifests.mocks import render_program
from devtools.pods.process import JobRun
from jobs import __main__ as cli
from jobs.beads import BdClient, BdError, BdRejected
from jobs.database import resolve
from jobs.lock import DoltNamedLock, LockError, lock_on
from jobs.protocol import ATTEMPTS_KEY, STAGE_KEY, Status
from tests.support.harness import LATE_BY, LATE_TIMEOUT, NOW, JobHarness, closed_port
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH, STATUS


def bystanders(store: MemoryStore) -> None:
    """Beads a run must never touch, whatever goes wrong."""
    store.add("a human's open bead", assignee="alice")
    store.add("agent bead without criteria", acceptance="")
    store.add("agent at work", status="in_progress")
    store.add("done", status="closed")


def error_lines(run: JobRun) -> list[dict[str, Any]]:
    # Every line is a JSON object: JobRun.events fails the test otherwise.
    return [event for event in run.events if event["level"] == "error"]


def warning_lines(run: JobRun) -> list[dict[str, Any]]:
    return [event for event in run.events if event["level"] == "warning"]


def error_text(event: dict[str, Any]) -> str:
    return str(event.get("error") or event.get("reason") or "")


def unreachable_dolt_lock() -> DoltNamedLock:
    """Server mode, and the Dolt server refuses connections."""
    return DoltNamedLock("127.0.0.1", closed_port(), "root", "", "code")


BdFault = Callable[[MemoryStore, str], None]  # (store, the bead in hand)


@dataclass(frozen=True)
class Fault:
    """One injected fault and what the run must do about it.

    bead: "unchanged", "failed" (back to open, attempt 1 counted, failure noted),
    "busy" (back to open, not counted), "dispatched" (BeadBoard took it: in_progress,
    stage cleared, the dispatch commented), "unknown" (the request went out and no answer
    came back: stays in_progress with stage=sending, never sent again), "unrecorded" (sent
    and taken, but bd failed recording it: stays at stage=sending, never resent) or
    "handed_back" (claimed, then bd failed before the POST: back to open, not counted),
    "service_down" (BeadBoard unreachable or answering 5xx: back to open, not counted) or
    "unconfirmed" (a 2xx that is not a JSON object: dispatched, and flagged for a human).
    warning: a fragment of the one warning the run must log, if any; warned: its event.
    """

    id: str
    error: str | None  # a fragment of the one error line; None = no error line at all
    exit_code: int
    bead: str
    dispatch_reply: Reply | None = None
    status_reply: Reply | None = None
    bd: BdFault | None = None
    late: bool = False  # the reply comes late or never: a real socket, LATE_TIMEOUT
    refused_post: bool = False  # BeadBoard's POST hits a closed port
    lock_held: bool = False  # another live run holds the dispatch lock
    lock_unreachable: bool = False  # server mode, and the Dolt server refuses connections
    posts: int = 0
    warning: str | None = None
    warned: str = "bead.skipped"


DISPATCH_FAULTS = (
    # BeadBoard, or the agent service behind it, down: back to open, no attempt counted.
    Fault(
        "post-500",
        "HTTP 500 no agent-service URL",
        1,
        "service_down",
        Reply(status=500, json={"error": "no agent-service URL"}),
        posts=1,
    ),
    Fault(
        "post-502",
        "HTTP 502 agent service unreachable",
        1,
        "service_down",
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
    Fault("post-409", None, 0, "busy", Reply(status=409, json={"error": "Agent is busy"}), posts=1),
    Fault("post-refused", "connection failed", 1, "service_down", refused_post=True),
    # A gateway gave up waiting: BeadBoard may have started a job, so never sent again.
    Fault(
        "post-504",
        "HTTP 504 gateway timeout",
        1,
        "unknown",
        Reply(status=504, body="<html>Gateway Time-out</html>"),
        posts=1,
        warning="dispatch outcome unknown",
    ),
    Fault(
        "post-timeout",
        f"timeout (no whole answer within {LATE_TIMEOUT:g}s)",
        1,
        "unknown",
        Reply(delay=LATE_BY),
        late=True,
        posts=1,
        warning="dispatch outcome unknown",
    ),
    Fault(
        "post-slow-body",
        f"timeout (no whole answer within {LATE_TIMEOUT:g}s)",
        1,
        "unknown",
        Reply(stall=LATE_BY, json={"job_id": "job-late"}),
        late=True,
        posts=1,
        warning="dispatch outcome unknown",
    ),
    Fault(
        "post-500-html",
        "HTTP 500",
        1,
        "service_down",
        Reply(status=500, body="<html>Internal Server Error</html>"),
        posts=1,
    ),
    # Any 2xx is BeadBoard taking the bead, whatever its body: no fault, never resent; a
    # body that is not a JSON object is not BeadBoard's answer, so a human is asked to look.
    Fault(
        "post-200-invalid-json",
        None,
        0,
        "unconfirmed",
        Reply(status=200, body='{"job_id": "job-1"'),
        posts=1,
        warning="a non-JSON body",
        warned="dispatch.suspicious",
    ),
    # Nested deeper than json.loads recurses: once a RecursionError and a traceback.
    Fault(
        "post-200-nested-json",
        None,
        0,
        "unconfirmed",
        Reply(status=200, body="[" * 50_000),
        posts=1,
        warning="a non-JSON body",
        warned="dispatch.suspicious",
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
        "unconfirmed",
        Reply(status=202),
        posts=1,
        warning="an empty body",
        warned="dispatch.suspicious",
    ),
    # The status check fails before anything is claimed: the bead stays as it was.
    Fault("status-500", f"GET {STATUS}: HTTP 500", 1, "unchanged", status_reply=Reply(500)),
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
        f"GET {STATUS}: timeout",
        1,
        "unchanged",
        status_reply=Reply(delay=LATE_BY),
        late=True,
    ),
    Fault(
        "status-slow-body",
        f"GET {STATUS}: timeout",
        1,
        "unchanged",
        status_reply=Reply(stall=LATE_BY, json={"busy": False}),
        late=True,
    ),
    # bd faults, wherever in the run they hit.
    Fault(
        "bd-query-fails",
        "bd query exited 1: injected failure",
        1,
        "unchanged",
        bd=lambda store, bead: store.fail("queue"),
    ),
    Fault(
        "bd-ready-fails",
        "bd ready exited 1: injected failure",
        1,
        "unchanged",
        bd=lambda store, bead: store.fail("ready"),
    ),
    Fault(
        "bd-every-call-fails",
        "bd query exited 1: injected failure",
        1,
        "unchanged",
        bd=lambda store, bead: store.fail(),
    ),
    # The claim fails, and so does handing the bead back: it is left for the next run.
    Fault(
        "bd-update-fails",
        "bd update exited 1: injected failure",
        1,
        "unchanged",
        bd=lambda store, bead: store.fail("update"),
    ),
    Fault(
        "bd-fails-on-the-bead-in-hand",
        "bd update exited 1: injected failure",
        1,
        "unchanged",
        bd=lambda store, bead: store.fail(bead=bead),
    ),
    # The claim landed, then bd failed (a crash after its commit): handed back at once.
    Fault(
        "bd-claim-lands-then-fails",
        "bd update exited 1: injected failure",
        1,
        "handed_back",
        bd=lambda store, bead: store.fail("update", nth=1, land=True),
    ),
    Fault(
        "bd-mark-sending-fails",
        "bd update exited 1: injected failure",
        1,
        "handed_back",
        bd=lambda store, bead: store.fail("update", nth=2),
    ),
    # BeadBoard took the bead; recording it fails: it stays "sending", never sent again.
    Fault(
        "bd-comment-fails",
        "bd comments exited 1: injected failure",
        1,
        "unrecorded",
        bd=lambda store, bead: store.fail("comment"),
        posts=1,
    ),
    Fault(
        "bd-clearing-the-stage-fails",
        "bd update exited 1: injected failure",
        1,
        "unrecorded",
        bd=lambda store, bead: store.fail("update", nth=3),
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
)


@dataclass(frozen=True)
class FaultedRun:
    """One dispatcher run with a fault injected, and the store as it was before it."""

    fault: Fault
    run: JobRun
    bead: str  # the bead in hand
    before: dict[str, Any]
    stderr: str

    @property
    def errors(self) -> list[dict[str, Any]]:
        return error_lines(self.run)


def each(faults: Sequence[Fault]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("fault", faults, ids=[fault.id for fault in faults])


def ending(*beads: str) -> tuple[Fault, ...]:
    return tuple(fault for fault in DISPATCH_FAULTS if fault.bead in beads)


def the(fault_id: str) -> Fault:
    [fault] = [fault for fault in DISPATCH_FAULTS if fault.id == fault_id]
    return fault


@pytest.fixture
def faulted(
    fault: Fault,
    harness: JobHarness,
    store: MemoryStore,
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
) -> FaultedRun:
    bystanders(store)
    bead = store.add("the one in hand", priority=0)
    before = store.snapshot()
    if fault.dispatch_reply is not None:
        beadboard.program(DISPATCH, fault.dispatch_reply)
    if fault.status_reply is not None:
        beadboard.program(STATUS, fault.status_reply)
    if fault.bd is not None:
        fault.bd(store, bead)
    if fault.late:
        harness.over_sockets()
    settings: dict[str, Any] = {}
    if fault.refused_post:
        # Slots from /health, so BeadBoard is asked nothing before the POST that fails.
        settings["agent_health_url"] = harness.health_url
        settings["beadboard_url"] = f"http://127.0.0.1:{closed_port()}"
    lock = unreachable_dolt_lock() if fault.lock_unreachable else None
    with harness.lock_held_elsewhere() if fault.lock_held else contextlib.nullcontext():
        run = harness.dispatch(lock=lock, **settings)
    return FaultedRun(fault, run, bead, before, capsys.readouterr().err)


# -- every fault: the exit code, the log, the requests, the lock, the bystanders ------------


@each(DISPATCH_FAULTS)
def test_dispatch_fault_exit_code(faulted: FaultedRun) -> None:
    assert faulted.run.code == faulted.fault.exit_code, faulted.run.stdout
    assert faulted.run.summary["exit_code"] == faulted.fault.exit_code


@each(DISPATCH_FAULTS)
def test_dispatch_fault_is_logged_never_a_traceback(faulted: FaultedRun) -> None:
    assert faulted.stderr == ""


@each([fault for fault in DISPATCH_FAULTS if fault.error is not None])
def test_dispatch_fault_is_one_error_line_naming_it(faulted: FaultedRun) -> None:
    [error] = faulted.errors
    assert str(faulted.fault.error) in error_text(error), error
    assert "\n" not in error_text(error)


@each([fault for fault in DISPATCH_FAULTS if fault.error is None])
def test_no_fault_of_the_run_no_error_line(faulted: FaultedRun) -> None:
    assert faulted.errors == []


@each([fault for fault in DISPATCH_FAULTS if fault.warning is not None])
def test_the_one_warning_names_the_bead_and_the_trouble(faulted: FaultedRun) -> None:
    [warning] = warning_lines(faulted.run)
    assert (warning["event"], warning["bead"]) == (faulted.fault.warned, faulted.bead)
    assert str(faulted.fault.warning) in error_text(warning) + str(warning.get("body")), warning


@each([fault for fault in DISPATCH_FAULTS if fault.warning is None])
def test_no_warning_line(faulted: FaultedRun) -> None:
    assert warning_lines(faulted.run) == []


@each(DISPATCH_FAULTS)
def test_dispatch_fault_posts_at_most_once(faulted: FaultedRun, beadboard: BeadBoardStub) -> None:
    assert len(beadboard.requests_to(DISPATCH)) == faulted.fault.posts


@each(DISPATCH_FAULTS)
def test_dispatch_fault_releases_the_lock(faulted: FaultedRun, harness: JobHarness) -> None:
    assert harness.lock_is_free()


@each(DISPATCH_FAULTS)
def test_dispatch_fault_leaves_the_other_beads_alone(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    after = store.snapshot()
    after.pop(faulted.bead)
    assert after == {k: v for k, v in faulted.before.items() if k != faulted.bead}


@each([the("lock-held")])
def test_a_lock_held_elsewhere_ends_the_run_as_lock_busy(faulted: FaultedRun) -> None:
    assert faulted.run.summary["outcome"] == "lock_busy"


# -- the bead in hand: one end state each --------------------------------------------------


@each(ending("unchanged"))
def test_a_fault_before_the_claim_leaves_the_bead_as_it_was(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    assert store.snapshot()[faulted.bead] == faulted.before[faulted.bead]


@each(ending("unknown", "unrecorded"))
def test_a_bead_maybe_sent_stays_in_progress_at_stage_sending(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    state = store.bead(faulted.bead)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})


@each(ending("unknown", "unrecorded"))
def test_a_bead_maybe_sent_is_never_sent_again(
    faulted: FaultedRun, harness: JobHarness, beadboard: BeadBoardStub
) -> None:
    assert harness.dispatch().code == 0
    assert len(beadboard.requests_to(DISPATCH)) == faulted.fault.posts


@pytest.mark.parametrize(
    ("fault", "comment"),
    [(fault, "dispatch outcome unknown: ") for fault in ending("unknown")]
    + [(the("bd-clearing-the-stage-fails"), "dispatched: job=job-1 ")],
    ids=[fault.id for fault in ending("unknown")] + ["bd-clearing-the-stage-fails"],
)
def test_a_bead_maybe_sent_says_how_far_it_got(
    faulted: FaultedRun, store: MemoryStore, comment: str
) -> None:
    assert store.comments(faulted.bead)[-1].startswith(comment)


@each([the("bd-comment-fails")])
def test_a_dispatch_bd_failed_to_comment_has_no_comment(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    assert store.comments(faulted.bead) == []


@each(ending("dispatched", "unconfirmed"))
def test_a_bead_beadboard_took_is_in_progress_with_no_stage(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    state = store.bead(faulted.bead)
    assert (state.status, state.metadata) == ("in_progress", {})


@each(ending("dispatched"))
def test_a_bead_beadboard_took_without_a_job_id_says_so(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    record = store.comments(faulted.bead)[-1]
    assert record.startswith("dispatched: BeadBoard answered HTTP 20"), record


@each(ending("unconfirmed"))
def test_an_unconfirmed_dispatch_asks_a_human_to_check_the_ingress(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    record = store.comments(faulted.bead)[-1]
    assert record.startswith("dispatched, unconfirmed: HTTP 20"), record
    assert f"with {faulted.fault.warning} (" in record and "check BeadBoard's ingress" in record


@each(ending("failed", "busy", "service_down", "handed_back"))
def test_a_bead_not_taken_goes_back_to_open_with_no_stage(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    state = store.bead(faulted.bead)
    assert (state.status, STAGE_KEY in state.metadata) == ("open", False)


@each(ending("failed"))
def test_a_bead_beadboard_refused_counts_one_attempt(
    faulted: FaultedRun, store: MemoryStore
) -> None:
    assert store.bead(faulted.bead).metadata == {ATTEMPTS_KEY: 1}
    last = store.notes(faulted.bead)[-1]
    assert last.startswith("dispatch failed (attempt 1/3): ") and str(faulted.fault.error) in last


@each(ending("busy", "service_down", "handed_back"))
def test_a_bead_not_at_fault_counts_no_attempt(faulted: FaultedRun, store: MemoryStore) -> None:
    assert store.bead(faulted.bead).metadata == {}


@each(ending("busy"))
def test_a_busy_agent_is_noted_on_the_bead(faulted: FaultedRun, store: MemoryStore) -> None:
    assert store.notes(faulted.bead)[-1].startswith("agent busy (Agent is busy); back to open")


@each(ending("service_down"))
def test_a_service_down_is_noted_on_the_bead(faulted: FaultedRun, store: MemoryStore) -> None:
    last = store.notes(faulted.bead)[-1]
    assert last.startswith(f"not sent: agent service unavailable ({faulted.fault.error}")
    assert "back to open, no attempt counted" in last


@each(ending("service_down"))
def test_a_service_down_is_the_error_line_of_the_bead(faulted: FaultedRun) -> None:
    [down] = faulted.errors
    assert (down["event"], down["bead"]) == ("dispatch.service_down", faulted.bead)


@each(ending("handed_back"))
def test_a_bead_handed_back_says_bd_failed(faulted: FaultedRun, store: MemoryStore) -> None:
    last = store.notes(faulted.bead)[-1]
    assert last.startswith("not dispatched: bd failed ")
    assert "back to open, not counted as a failed attempt" in last


@each(ending("handed_back"))
def test_a_bead_handed_back_is_the_error_line(faulted: FaultedRun) -> None:
    [failed] = faulted.errors
    assert (failed["event"], failed["handed_back"]) == ("bead.failed", True)


def test_a_bd_failure_on_one_bead_does_not_stop_the_others(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    first = store.add("first", priority=0)
    second = store.add("second", priority=1)
    beadboard.health.capacity = 2
    store.fail(bead=first)
    run = harness.dispatch(agent_health_url=harness.health_url)
    assert run.code == 1
    [failed] = error_lines(run)
    assert (failed["event"], failed["bead"], failed["step"]) == ("bead.failed", first, "claim")
    assert failed["handed_back"] is False
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [second]
    assert run.summary["dispatched"] == [second]
    assert store.bead(first).status == "open"


def test_a_timed_out_post_that_beadboard_accepted_is_not_sent_twice(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    # BeadBoard started the job and answered 200, but the body arrived after our timeout.
    beadboard.program(DISPATCH, Reply(stall=LATE_BY, json={"job_id": "job-started"}))
    harness.over_sockets()
    assert [harness.dispatch().code, harness.dispatch().code] == [1, 0]
    assert len(beadboard.requests_to(DISPATCH)) == 1


# -- the reaper: one line per bead it could not handle; a failed write fails the run ---------

STALE = NOW - timedelta(hours=1)


@dataclass(frozen=True)
class ReapFault:
    id: str
    error: str | None
    exit_code: int
    bd: BdFault | None = None
    warning: str | None = None
    lock_unreachable: bool = False
    blocked: bool = False  # the write landed before bd failed


REAP_FAULTS = (
    ReapFault("query-fails", "bd query exited 1", 1, bd=lambda store, bead: store.fail("queue")),
    # bd show fails for *any* lookup problem: the bead is skipped, never judged gone.
    ReapFault(
        "show-fails",
        None,
        0,
        bd=lambda store, bead: store.fail("show"),
        warning="cannot re-read it: bd show exited 1",
    ),
    ReapFault(
        "show-times-out",
        None,
        0,
        bd=lambda store, bead: store.fail("show", message="bd show timed out after 60s"),
        warning="cannot re-read it: bd show timed out after 60s",
    ),
    ReapFault("update-fails", "bd update exited 1", 1, bd=lambda store, bead: store.fail("update")),
    ReapFault(
        "update-lands-then-fails",
        "bd update exited 1",
        1,
        bd=lambda store, bead: store.fail("update", land=True),
        blocked=True,
    ),
    ReapFault(
        "lock-service-unreachable", "cannot connect to Dolt at 127.0.0.1", 1, lock_unreachable=True
    ),
)


@dataclass(frozen=True)
class ReapedRun:
    fault: ReapFault
    run: JobRun
    stuck: str  # the stale bead
    before: dict[str, Any]
    stderr: str


def each_reap(faults: Sequence[ReapFault]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("reap_fault", faults, ids=[fault.id for fault in faults])


@pytest.fixture
def reaped(
    reap_fault: ReapFault,
    harness: JobHarness,
    store: MemoryStore,
    capsys: pytest.CaptureFixture[str],
) -> ReapedRun:
    bystanders(store)
    stuck = store.add("stuck for an hour", status="in_progress", updated_at=STALE)
    before = store.snapshot()
    if reap_fault.bd is not None:
        reap_fault.bd(store, stuck)
    run = harness.reap(lock=unreachable_dolt_lock() if reap_fault.lock_unreachable else None)
    return ReapedRun(reap_fault, run, stuck, before, capsys.readouterr().err)


@each_reap(REAP_FAULTS)
def test_reap_fault_exit_code(reaped: ReapedRun) -> None:
    assert reaped.run.code == reaped.fault.exit_code, reaped.run.stdout


@each_reap(REAP_FAULTS)
def test_reap_fault_is_logged_never_a_traceback(reaped: ReapedRun) -> None:
    assert reaped.stderr == ""


@each_reap([fault for fault in REAP_FAULTS if fault.error is not None])
def test_reap_fault_is_one_error_line_naming_it(reaped: ReapedRun) -> None:
    [error] = error_lines(reaped.run)
    assert str(reaped.fault.error) in error_text(error), error


@each_reap([fault for fault in REAP_FAULTS if fault.error is None])
def test_a_bead_the_reaper_skips_is_no_error(reaped: ReapedRun) -> None:
    assert error_lines(reaped.run) == []


@each_reap([fault for fault in REAP_FAULTS if fault.warning is not None])
def test_a_bead_the_reaper_skips_is_one_warning_naming_it(reaped: ReapedRun) -> None:
    [warning] = warning_lines(reaped.run)
    assert (warning["event"], warning["bead"]) == ("bead.skipped", reaped.stuck)
    assert str(reaped.fault.warning) in error_text(warning), warning


@each_reap([fault for fault in REAP_FAULTS if fault.warning is None])
def test_reap_fault_no_warning_line(reaped: ReapedRun) -> None:
    assert warning_lines(reaped.run) == []


@each_reap([fault for fault in REAP_FAULTS if not fault.blocked])
def test_a_stale_bead_the_reaper_could_not_block_stays_in_progress(
    reaped: ReapedRun, store: MemoryStore
) -> None:
    # The next run blocks it.
    assert store.bead(reaped.stuck).status == "in_progress"


@each_reap([fault for fault in REAP_FAULTS if fault.blocked])
def test_a_block_that_landed_before_bd_failed_stays(reaped: ReapedRun, store: MemoryStore) -> None:
    assert store.bead(reaped.stuck).status == "blocked"


@each_reap(REAP_FAULTS)
def test_reap_fault_leaves_the_other_beads_alone(reaped: ReapedRun, store: MemoryStore) -> None:
    after = store.snapshot()
    after.pop(reaped.stuck)
    assert after == {k: v for k, v in reaped.before.items() if k != reaped.stuck}


@each_reap(REAP_FAULTS)
def test_reap_fault_releases_the_lock(reaped: ReapedRun, harness: JobHarness) -> None:
    assert harness.lock_is_free()


@pytest.mark.parametrize(
    ("method", "code"), [("update", 1), ("show", 0)], ids=["update-fails", "show-fails"]
)
def test_one_bead_failing_to_reap_does_not_stop_the_others(
    harness: JobHarness, store: MemoryStore, method: str, code: int
) -> None:
    first = store.add("first", status="in_progress", updated_at=STALE)
    second = store.add("second", status="in_progress", updated_at=STALE)
    before = store.snapshot()
    # bd refuses every call of one kind: each stale bead is still tried and reported.
    store.fail("update" if method == "update" else "show")
    run = harness.reap()
    assert run.code == code, run.stdout
    assert [call.bead for call in store.log if call.method == method] == [first, second]
    # A failed show is a warning (the bead is simply skipped); a failed write is an error.
    reported = warning_lines(run) if method == "show" else error_lines(run)
    assert [line["bead"] for line in reported] == [first, second]
    assert all(f"bd {method} exited 1" in error_text(line) for line in reported)
    assert run.summary["skipped"] == [first, second]
    assert store.snapshot() == before


# -- BdClient: what reaches bd, and what becomes of whatever bd prints -------------------------


@dataclass
class ScriptedBd:
    """An injected runner: answers as told and keeps each command it was given."""

    stdout: str = "[]"
    stderr: str = ""
    returncode: int = 0
    commands: list[list[str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        self.options = options
        return subprocess.CompletedProcess(command, self.returncode, self.stdout, self.stderr)

    def client(self) -> BdClient:
        return BdClient("bd", Path("/beads"), actor="agent", timeout_seconds=7, runner=self)


def test_bd_is_asked_for_every_queued_bead_with_the_assignee_quoted() -> None:
    bd = ScriptedBd()
    bd.client().queue("bot@corp.example", Status.OPEN)
    assert bd.commands == [
        [
            "bd",
            "--db",
            "/beads",
            "--actor",
            "agent",
            "--json",
            "query",
            'assignee="bot@corp.example" AND status=open',
            "--limit",
            "0",  # bd's default cap of 50 would starve the rest of the queue
        ]
    ]
    assert bd.options["timeout"] == 7
    # A stray non-UTF-8 byte becomes U+FFFD, never a UnicodeDecodeError.
    assert (bd.options["encoding"], bd.options["errors"]) == ("utf-8", "replace")
    assert bd.options["stdin"] == subprocess.DEVNULL


def test_one_update_carries_the_claim_status_note_and_metadata_together() -> None:
    bd = ScriptedBd()
    client = bd.client()
    client.update(
        "tb-1",
        claim=True,
        status=Status.IN_PROGRESS,
        note="claimed",
        set_metadata={"b": "2", "a": "1"},
        unset_metadata=["c"],
        actor="bot",
    )
    [update] = bd.commands
    assert update[4:] == [
        "bot",
        "--json",
        "update",
        "tb-1",
        "--claim",
        "--status",
        "in_progress",
        "--append-notes",
        "claimed",
        "--set-metadata",
        "a=1",
        "--set-metadata",
        "b=2",
        "--unset-metadata",
        "c",
    ]
    assert client.calls == 1


def test_a_comment_starting_with_a_dash_is_text_never_a_flag() -> None:
    bd = ScriptedBd()
    bd.client().comment("tb-1", "--not-a-flag")
    [comment] = bd.commands
    assert comment[4:] == ["agent", "--json", "comments", "add", "tb-1", "--", "--not-a-flag"]


# What bd 1.0.2 prints when --db names a directory holding no database (recorded).
REAL_BD_OPEN_FAILURE = (
    json.dumps(
        {
            "error": "failed to open database: embeddeddolt: database name must not be empty "
            '(caller should default to "beads")'
        },
        indent=2,
    )
    + "\n",
    "warning: no beads configuration found in /tmp; database name may default incorrectly\n",
)
NO_DATABASE = (
    "Error: no beads database found\n"
    "Hint: run 'bd where' to inspect the resolved workspace, or 'bd init' to create "
    "a new database\n"
    "      or set BEADS_DIR to point to your .beads directory\n"
)


@pytest.mark.parametrize(
    ("stdout", "stderr", "returncode", "expected"),
    [
        # A crash: the last line bd printed that is not advisory noise.
        ("", "panic: runtime error\ngoroutine 1 [running]:\n", 2, "bd query exited 2: goroutine 1"),
        ('[{"id": "tb-1", "status"', "", 0, 'bd query printed invalid JSON: \'[{"id": "tb-1"'),
        (
            '{"id": "tb-1"}',
            "",
            0,
            """bd query 'assignee="agent" AND status=open' printed dict, expected a JSON array""",
        ),
        (*REAL_BD_OPEN_FAILURE, 1, "bd query exited 1: failed to open database: embeddeddolt:"),
        ("", NO_DATABASE, 1, "bd query exited 1: Error: no beads database found"),
        (
            "",
            "warning: beads.role not configured\n" * 3 + "Error: database is locked\n",
            1,
            "bd query exited 1: Error: database is locked",
        ),
        ("x" * 100_000, "", 0, "bd query printed invalid JSON: 'xxx"),
    ],
    ids=[
        "crash",
        "truncated-json",
        "not-an-array",
        "db-unopenable",
        "db-missing",
        "advisory-lines",
        "huge-garbage",
    ],
)
def test_whatever_bd_prints_is_beads_or_one_short_bd_error(
    stdout: str, stderr: str, returncode: int, expected: str
) -> None:
    with pytest.raises(BdError) as caught:
        ScriptedBd(stdout, stderr, returncode).client().queue("agent", Status.OPEN)
    message = str(caught.value)
    assert type(caught.value) is BdError
    assert message.startswith(expected), message
    assert "\n" not in message
    assert len(message) < 360  # bd's text is quoted as an excerpt, never wholesale


def test_bd_failing_on_its_config_keeps_the_cause_it_printed_as_a_warning() -> None:
    """bd goes on without a metadata.json it cannot read, then fails on something else."""
    stdout = REAL_BD_OPEN_FAILURE[0]
    stderr = (
        "warning: failed to load beads config from /x/.beads: parsing config: json: cannot "
        "unmarshal string into Go struct field Config.dolt_server_port of type int\n"
    )
    with pytest.raises(BdError) as caught:
        ScriptedBd(stdout, stderr, 1).client().queue("agent", Status.OPEN)
    message = str(caught.value)
    assert message.startswith("bd query exited 1: failed to open database: embeddeddolt:")
    assert message.endswith("Config.dolt_server_port of type int)")


def test_a_long_error_keeps_both_ends() -> None:
    # bd often names the cause last, after a long context.
    stderr = "Error: " + "context " * 500 + "caused by: disk full\n"
    with pytest.raises(BdError) as caught:
        ScriptedBd("", stderr, 1).client().update("tb-1", status=Status.OPEN)
    message = str(caught.value)
    assert message.startswith("bd update exited 1: Error: context context")
    assert message.endswith("caused by: disk full")
    assert "…" in message


@pytest.mark.parametrize(
    ("call", "stdout", "stderr", "expected"),
    [
        (
            "claim",
            "",
            "warning: beads.role not configured\nError claiming tb-1: issue already claimed by "
            "alice\nHint: see bd help update\n",
            "bd update tb-1: Error claiming tb-1: issue already claimed by alice",
        ),
        (
            "claim",
            "",
            'Error resolving tb-1: no issue found matching "tb-1"\n',
            'bd update tb-1: Error resolving tb-1: no issue found matching "tb-1"',
        ),
        (
            "show",
            '{"error": "no issues found matching the provided IDs"}\n',
            "",
            "bd show tb-1: no issues found matching the provided IDs",
        ),
    ],
    ids=["claimed-by-another", "update-unknown-id", "show-unknown-id"],
)
def test_bd_refusing_is_a_rejection_not_a_fault(
    call: str, stdout: str, stderr: str, expected: str
) -> None:
    client = ScriptedBd(stdout, stderr, 1).client()
    with pytest.raises(BdRejected) as caught:
        if call == "show":
            client.show("tb-1")
        else:
            client.update("tb-1", claim=True, status=Status.IN_PROGRESS)
    assert str(caught.value) == expected


def test_huge_output_parses_whole() -> None:
    rows = [
        {
            "id": f"tb-{index}",
            "status": "open",
            "priority": 2,
            "assignee": "agent",
            "notes": "n" * 5_000,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
        for index in range(1_000)
    ]
    result = ScriptedBd(json.dumps(rows)).client().queue("agent", Status.OPEN)
    assert [bead.id for bead in result.beads] == [row["id"] for row in rows]
    assert result.unreadable == {}


def scripted_bd(directory: Path, body: str) -> Path:
    """A `bd` of a few shell lines, for what only a real process shows."""
    script = directory / "bd"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)
    return script


def test_a_hung_bd_is_killed_at_the_timeout(tmp_path: Path) -> None:
    # exec: the sleep itself is bd, so killing bd closes its pipes at once.
    bd = scripted_bd(tmp_path, "exec sleep 30")
    client = BdClient(str(bd), tmp_path, actor="agent", timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(BdError) as caught:
        client.queue("agent", Status.OPEN)
    assert str(caught.value) == "bd query timed out after 0.3s"
    assert time.monotonic() - started < 5


def test_bytes_that_are_not_utf8_are_one_unreadable_row_not_a_crash(tmp_path: Path) -> None:
    bd = scripted_bd(tmp_path, """printf '[{"id": "caf\\351"}]'""")
    result = BdClient(str(bd), tmp_path, actor="agent", timeout_seconds=5).queue(
        "agent", Status.OPEN
    )
    assert result.beads == []
    assert list(result.unreadable) == ["caf\ufffd"]


def test_a_bd_that_cannot_be_run_is_a_bd_error(tmp_path: Path) -> None:
    client = BdClient(str(tmp_path / "no-bd"), tmp_path, actor="agent", timeout_seconds=5)
    with pytest.raises(BdError) as caught:
        client.queue("agent", Status.OPEN)
    assert str(caught.value).startswith(f"cannot run bd ({tmp_path / 'no-bd'}): No such file")


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


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The secrets set where any code could pick them up: the process environment."""
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    return SECRET_ENV


@pytest.fixture
def runs_among_secrets(
    secret_env: dict[str, str], harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> list[JobRun]:
    """A dispatch, a refused dispatch, a reap, a dry run and a bd failure, secrets all around."""
    store.add("dispatched", priority=0)
    store.add("fails", priority=1)
    store.add("stuck", status="in_progress", updated_at=STALE)
    beadboard.program(
        DISPATCH, Reply(json={"job_id": "job-1"}), Reply(status=502, json={"error": "down"})
    )
    runs = [harness.dispatch(), harness.dispatch(), harness.reap(), harness.dispatch(dry_run=True)]
    store.fail("queue")
    return [*runs, harness.dispatch()]


def test_no_secret_in_the_log_of_any_run(runs_among_secrets: list[JobRun]) -> None:
    assert [run.code for run in runs_among_secrets] == [0, 1, 0, 0, 1]
    assert leaks("".join(run.stdout for run in runs_among_secrets)) == []


def test_no_secret_in_the_notes(runs_among_secrets: list[JobRun], store: MemoryStore) -> None:
    notes = "\n".join(str(row["notes"]) for row in store.rows.values())
    assert "agent service unavailable (HTTP 502 down)" in notes  # the failure path's notes
    assert leaks(notes) == []


def test_no_secret_in_the_comments(runs_among_secrets: list[JobRun], store: MemoryStore) -> None:
    comments = "\n".join("\n".join(store.comments(bead)) for bead in store.rows)
    assert "dispatched: job=job-1" in comments
    assert leaks(comments) == []


def test_no_secret_in_the_requests(
    runs_among_secrets: list[JobRun], beadboard: BeadBoardStub
) -> None:
    sent = [json.dumps(request.headers) + request.text for request in beadboard.requests]
    assert len(sent) >= 4
    assert leaks("\n".join(sent)) == []


def test_beadboard_gets_no_authorization_header(
    runs_among_secrets: list[JobRun], beadboard: BeadBoardStub
) -> None:
    # BeadBoard's agent routes need no token.
    headers = [{name.lower() for name in request.headers} for request in beadboard.requests]
    assert len(headers) >= 4
    assert [names for names in headers if "authorization" in names] == []


def test_a_lock_failure_does_not_quote_the_password(tmp_path: Path) -> None:
    # The server-mode lock reads the password from the env.
    server: dict[str, object] = {"dolt_mode": "server", "dolt_server_host": "127.0.0.1"}
    server |= {"dolt_server_port": closed_port(), "dolt_database": "code"}
    (tmp_path / "metadata.json").write_text(json.dumps(server), encoding="utf-8")
    with pytest.raises(LockError) as failure:
        lock_on(resolve(tmp_path, SECRET_ENV), SECRET_ENV).try_acquire()
    assert leaks(str(failure.value)) == []


def test_a_configuration_error_quotes_no_secret_set_alongside(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    environ = {**SECRET_ENV, "HTTP_TIMEOUT_SECONDS": "soon", "BD_BIN": "/nonexistent/bd"}
    assert cli.main(["dispatch"], environ=environ, stream=stream) == 2
    assert leaks(stream.getvalue() + capsys.readouterr().err) == []


def test_no_secret_from_the_environment_reaches_the_manifests(secret_env: dict[str, str]) -> None:
    rendered = render_program(
        {"doltPasswordSecretName": "dolt-credentials", "doltPasswordSecretKey": "password"}
    )
    manifests = json.dumps([r.inputs for r in rendered.resources], sort_keys=True)
    assert leaks(manifests) == []
    # The password reaches the pod only as a reference to its Secret.
    assert re.search(
        r'"secretKeyRef": \{"key": "password", "name": "dolt-credentials"\}', manifests
    )
