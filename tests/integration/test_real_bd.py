"""Every tick path against the real bd 1.0.2 (embedded mode), read back with `bd show --json`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub, Reply
from jobs.lock import LOCK_FILE_NAME
from jobs.protocol import ATTEMPTS_KEY, STAGE_KEY
from tests.integration.conftest import RealJobRunner, comments, notes
from tests.integration.interleave import LEGACY_LOCK_BEAD
from tests.support.routes import DISPATCH


def agent_bead(bd: RealBd, title: str = "task", priority: int = 2) -> str:
    return bd.create(title, priority=priority, assignee="agent", acceptance="it works")


def all_bead_ids(bd: RealBd) -> set[str]:
    """Every bead in the database, closed ones included."""
    rows = json.loads(bd.run("list", "--all", "--limit", "0", "--json"))
    return {str(row["id"]) for row in rows}


@pytest.fixture
def bd(real_bd: RealBd) -> RealBd:
    """A fresh database: the first dispatcher run needs nothing set up beforehand."""
    return real_bd


def test_first_run_on_a_new_database_dispatches_at_once_and_creates_no_bead(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_bead(real_bd)
    human = real_bd.create("human's", assignee="alice", acceptance="x")
    first = run_real("dispatch")
    assert first.code == 0, first.stdout + first.stderr
    assert first.summary["outcome"] == "dispatched", first.stdout
    assert first.summary["dispatched"] == [bead]
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": bead}]
    assert real_bd.show(bead)["status"] == "in_progress"
    # The lock is a flock on a file beside the database, taken and let go around the hand-off.
    lock_events = [e for e in first.events if e["event"].startswith("lock.")]
    assert [e["event"] for e in lock_events] == ["lock.acquired", "lock.released"]
    lock_file = real_bd.beads_dir / LOCK_FILE_NAME
    assert lock_events[0]["lock"] == f"flock {lock_file}"
    assert lock_file.is_file()
    # ...and not a bead: the database holds the test's beads and nothing else.
    assert all_bead_ids(real_bd) == {bead, human}
    assert real_bd.query(f"id={LEGACY_LOCK_BEAD}") == []


def test_dispatch_200(bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner) -> None:
    bead = agent_bead(bd)
    result = run_real("dispatch")
    assert result.code == 0, result.stdout + result.stderr
    state = bd.show(bead)
    assert (state["status"], state["assignee"]) == ("in_progress", "agent")
    assert state["started_at"]
    assert STAGE_KEY not in state.get("metadata", {})
    [claimed] = notes(bd, bead)
    assert claimed.startswith("beads-dispatcher claimed at ")
    # The record is a comment: it can never overwrite a note the agent writes meanwhile.
    [dispatched] = comments(bd, bead)
    assert dispatched.startswith("dispatched: job=job-1 (beads-dispatcher, ")
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": bead}]


def test_none_eligible_no_http(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bd.create("no criteria", assignee="agent")
    bd.create("human's", assignee="alice", acceptance="x")
    result = run_real("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "queue_empty"
    assert beadboard.requests == []


def test_busy(bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner) -> None:
    bead = agent_bead(bd)
    before = bd.show(bead)
    beadboard.busy = True
    result = run_real("dispatch")
    assert result.code == 0
    assert result.summary["outcome"] == "agent_busy"
    assert bd.show(bead) == before
    assert beadboard.requests_to(DISPATCH) == []


def test_409(bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner) -> None:
    bead = agent_bead(bd)
    beadboard.program(DISPATCH, Reply(status=409, json={"error": "Agent is busy"}))
    result = run_real("dispatch")
    assert result.code == 0
    state = bd.show(bead)
    assert state["status"] == "open"
    assert ATTEMPTS_KEY not in state.get("metadata", {})
    assert notes(bd, bead)[-1].startswith("agent busy (Agent is busy); back to open")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=400, json={"error": "bead has no acceptance criteria"}), "HTTP 400"),
        (Reply(status=404, json={"error": "no such task"}), "HTTP 404 no such task"),
    ],
    ids=["400", "404"],
)
def test_failures(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner, reply: Reply, reason: str
) -> None:
    bead = agent_bead(bd)
    beadboard.program(DISPATCH, reply)
    result = run_real("dispatch")
    assert result.code == 1
    state = bd.show(bead)
    assert state["status"] == "open"
    # bd keeps the JSON type: the count reads back as a number.
    assert state["metadata"] == {ATTEMPTS_KEY: 1}
    assert notes(bd, bead)[-1].startswith(f"dispatch failed (attempt 1/3): {reason}")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_the_service_down_hands_the_bead_back_uncharged(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner, status: int
) -> None:
    bead = agent_bead(bd)
    beadboard.program(DISPATCH, Reply(status=status, json={"error": "agent service failed"}))
    assert run_real("dispatch").code == 1
    state = bd.show(bead)
    assert (state["status"], state.get("metadata", {})) == ("open", {})
    assert notes(bd, bead)[-1].startswith(f"not sent: agent service unavailable (HTTP {status}")
    assert "no attempt counted" in notes(bd, bead)[-1]


def test_timeout_after_sending_is_not_resent(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_bead(bd)
    beadboard.program(DISPATCH, Reply(delay=4))
    assert run_real("dispatch").code == 1
    state = bd.show(bead)
    assert state["status"] == "in_progress"
    assert state["metadata"] == {STAGE_KEY: "sending"}
    assert comments(bd, bead)[-1].startswith("dispatch outcome unknown: timeout (no whole answer")
    assert run_real("dispatch").code == 0
    assert len(beadboard.requests_to(DISPATCH)) == 1


def test_attempts_exhausted_blocks(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_bead(bd)
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=400, json={"error": "bad"}))
    codes = [run_real("dispatch", MAX_DISPATCH_ATTEMPTS="2").code for _ in range(3)]
    assert codes == [1, 1, 0]
    state = bd.show(bead)
    assert state["status"] == "blocked"
    assert ATTEMPTS_KEY not in state.get("metadata", {})
    written = notes(bd, bead)
    assert [n.startswith("beads-dispatcher claimed at ") for n in written[::2]] == [True, True]
    assert [n.split(":")[0] for n in written[1::2]] == [
        "dispatch failed (attempt 1/2)",
        "dispatch failed (attempt 2/2)",
    ]
    assert "— blocking" in written[-1]
    assert len(beadboard.requests_to(DISPATCH)) == 2


def test_sixty_beads_only_the_sixtieth_eligible(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    rows = [
        {"title": f"no criteria {index}", "assignee": "agent", "priority": index % 4}
        for index in range(59)
    ]
    rows.append({"title": "the 60th", "assignee": "agent", "acceptance_criteria": "ok"})
    rows[-1]["priority"] = 4
    *_, last = bd.create_many(rows)
    assert bd.show(last)["acceptance_criteria"] == "ok"
    default_cap = json.loads(bd.run("query", "assignee=agent AND status=open", "--json"))
    assert len(default_cap) == 50 and last not in {row["id"] for row in default_cap}
    result = run_real("dispatch")
    assert result.code == 0, result.stdout
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": last}]
    assert bd.show(last)["status"] == "in_progress"


def test_priority_then_age_with_real_created_at(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    created = []
    for title, priority in (("p2 oldest", 2), ("p1 older", 1), ("p1 newer", 1), ("p0 newest", 0)):
        created.append(agent_bead(bd, title, priority))
        time.sleep(1.1)  # bd stores whole seconds
    p2_oldest, p1_older, p1_newer, p0_newest = created
    stamps = [bd.show(b)["created_at"] for b in created]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    # One run with four free agent slots sends all four, best first.
    beadboard.health.capacity = 4
    run = run_real("dispatch", AGENT_HEALTH_URL=f"{beadboard.url}/health")
    assert run.code == 0, run.stdout
    order = [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)]
    assert order == [p0_newest, p1_older, p1_newer, p2_oldest]


def test_reaper_stale_vs_fresh_and_others_untouched(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    mine = agent_bead(bd)
    bd.update(mine, "--status", "in_progress")
    human = bd.create("human work", assignee="alice", acceptance="x")
    bd.update(human, "--status", "in_progress")
    open_agent = agent_bead(bd, "still open")
    updated = datetime.fromisoformat(bd.show(mine)["updated_at"])
    before_others = [bd.show(human), bd.show(open_agent)]

    fresh = run_real("reap", now=updated + timedelta(minutes=29))
    assert fresh.code == 0 and fresh.summary["blocked"] == []
    assert bd.show(mine)["status"] == "in_progress"

    stale = run_real("reap", now=updated + timedelta(minutes=31, seconds=5))
    assert stale.code == 0, stale.stdout
    assert stale.summary["blocked"] == [mine]
    state = bd.show(mine)
    assert state["status"] == "blocked"
    blocked_note = "beads-reaper: no progress for 31m (threshold 30m) — blocking"
    assert notes(bd, mine)[-1].startswith(blocked_note)
    assert [bd.show(human), bd.show(open_agent)] == before_others
    assert beadboard.requests == []


def test_dry_run_changes_nothing(
    bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_bead(bd)
    before = bd.query("id=" + bead)
    result = run_real("dispatch", "--dry-run")
    assert result.code == 0
    assert bd.query("id=" + bead) == before
    assert beadboard.requests_to(DISPATCH) == []
