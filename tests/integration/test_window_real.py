"""Watch windows against the real bd: idle cost, draining every slot, SIGTERM mid-send."""

from __future__ import annotations

import signal
import subprocess
import sys

from devtools.bench.agent_sim import AgentSimulator
from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub, Reply
from devtools.paths import ROOT
from devtools.pods.process import JobRun, start_jobs
from jobs.lock import LOCK_FILE_NAME
from tests.integration.conftest import RealJobRunner, comments, notes, real_env
from tests.support.routes import DISPATCH


def test_idle_polls_after_the_first_read_cost_no_bd_call_and_no_http(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    real_bd.create("someone else's", assignee="alice", acceptance="x")
    result: JobRun = run_real("dispatch", DISPATCHER_WINDOW_SECONDS="4", POLL_INTERVAL_SECONDS="1")
    assert result.code == 0
    done = result.summary
    assert done["polls"] >= 3
    # The window's first poll reads with bd; nothing is written after, so the change
    # detector (the embedded store's manifest) lets every later poll end without bd.
    assert done["change_signal"] != "none"
    assert done["bd_calls"] == 1
    assert done["polls_without_bd"] == done["polls"] - 1
    assert beadboard.requests == []
    # Nor does an idle poll touch the dispatch lock: the lock file is never even opened.
    assert not [e for e in result.events if e["event"].startswith("lock.")]
    assert not (real_bd.beads_dir / LOCK_FILE_NAME).exists()


def hand_offs(run: JobRun) -> list[list[str]]:
    """The beads dispatched under each hold of the lock (one per poll that sent anything)."""
    held: list[list[str]] = []
    for event in run.events:
        if event["event"] == "lock.acquired":
            held.append([])
        elif event["event"] == "dispatch.done":
            held[-1].append(event["bead"])
    return held


def test_a_window_drains_the_queue_through_every_free_slot(real_bd: RealBd) -> None:
    beads = [
        real_bd.create(f"work {i}", assignee="agent", acceptance="x", priority=i % 3)
        for i in range(5)
    ]
    with AgentSimulator(capacity=3, run_seconds=2.0) as agent:
        env = real_env(
            real_bd,
            agent.url,
            # Each bead is claimed, marked, sent and recorded in turn (4 bd calls, ~1 s each
            # embedded): room for five of them and a second poll.
            DISPATCHER_WINDOW_SECONDS="25",
            POLL_INTERVAL_SECONDS="1",
            AGENT_HEALTH_URL=f"{agent.url}/health",
        )
        completed = subprocess.run(
            [sys.executable, "-m", "jobs", "dispatch"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        started = agent.dispatched_at()
    run = JobRun(completed.returncode, completed.stdout, completed.stderr)
    assert set(started) == set(beads)
    assert sorted(run.summary["dispatched"]) == sorted(beads)
    # Three free slots: the first poll fills all three (and no more, though five wait); the
    # other two go out in later polls of the same run, once slots have freed.
    assert next(e["free"] for e in run.events if e["event"] == "agent.load") == 3
    sent = hand_offs(run)
    assert len(sent[0]) == 3, sent
    assert len(sent) >= 2 and sum(len(batch) for batch in sent) == 5, sent
    assert sorted(started, key=started.__getitem__)[:3] == sent[0]
    assert agent.refused == 0  # never sent past the agent's capacity
    assert all(real_bd.show(b)["status"] == "in_progress" for b in beads)


def test_sigterm_finishes_the_post_in_hand_and_hands_the_rest_back(
    real_bd: RealBd, beadboard: BeadBoardStub
) -> None:
    first = real_bd.create("first", assignee="agent", acceptance="x", priority=0)
    second = real_bd.create("second", assignee="agent", acceptance="x", priority=1)
    beadboard.health.capacity = 2
    beadboard.set_handler(DISPATCH, lambda request: Reply(json={"job_id": "slow"}, delay=1.0))
    env = real_env(
        real_bd,
        beadboard.url,
        AGENT_HEALTH_URL=f"{beadboard.url}/health",
        HTTP_TIMEOUT_SECONDS="10",
    )
    process = start_jobs(["dispatch"], env)
    beadboard.wait_for(DISPATCH, count=1, timeout=60)
    # Two free slots, two eligible beads: SIGTERM lands while the first POST is in flight.
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stdout + stderr
    run = JobRun(process.returncode, stdout, stderr)
    assert run.event("run.stopping")["detail"] == "SIGTERM: finished the bead in hand"
    assert run.summary["dispatched"] == [first]
    assert run.summary["requeued"] == [second]
    # The bead in hand is finished: sent, and its dispatch recorded.
    state = real_bd.show(first)
    assert state["status"] == "in_progress"
    assert "auto_dispatch_stage" not in state.get("metadata", {})
    assert notes(real_bd, first)[-1].startswith("beads-dispatcher claimed at ")
    assert comments(real_bd, first)[-1].startswith("dispatched: job=slow")
    # Claimed with the first (two free slots), not sent: back in the queue, uncounted, saying why.
    state = real_bd.show(second)
    assert (state["status"], state.get("metadata") or {}) == ("open", {})
    assert notes(real_bd, second)[-1].startswith(
        "not dispatched: the run was stopped (SIGTERM) before sending it; back to open"
    )
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": first}]
