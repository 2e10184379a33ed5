"""Watch windows against the real bd: idle cost, draining every slot, SIGTERM hand-back."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.bench.agent_sim import AgentSimulator
from tests.conftest import ROOT, JobRun, start_jobs
from tests.integration.conftest import RealJobRunner, real_env
from tests.integration.test_real_bd import notes
from tests.realbd import RealBd, prime_lock
from tests.support.beadboard_stub import BeadBoardStub, Reply


def test_idle_polls_cost_one_bd_call_and_no_http(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    prime_lock(real_bd)
    real_bd.create("someone else's", assignee="alice", acceptance="x")
    result: JobRun = run_real("dispatch", DISPATCH_WINDOW_SECONDS="4", POLL_INTERVAL_SECONDS="0.5")
    assert result.code == 0
    done = result.summary
    assert done["polls"] >= 3
    assert done["bd_calls"] == done["polls"] == done["idle_polls"]
    assert beadboard.requests == []


def test_a_window_drains_the_queue_through_every_free_slot(real_bd: RealBd) -> None:
    prime_lock(real_bd)
    beads = [
        real_bd.create(f"work {i}", assignee="agent", acceptance="x", priority=i % 3)
        for i in range(5)
    ]
    with AgentSimulator(capacity=3, run_seconds=2.0) as agent:
        env = real_env(
            real_bd,
            agent.url,
            DISPATCH_WINDOW_SECONDS="15",
            POLL_INTERVAL_SECONDS="0.5",
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
    assert set(started) == set(beads)
    # Three at once, the other two only after slots freed: drained within the same run.
    first_batch = sorted(started.values())[:3]
    assert max(first_batch) - min(first_batch) < 2.0
    assert sorted(started.values())[3] - min(first_batch) >= 2.0
    assert agent.refused == 0
    assert all(real_bd.show(b)["status"] == "in_progress" for b in beads)


def test_sigterm_hands_unsent_beads_back(real_bd: RealBd, beadboard: BeadBoardStub) -> None:
    prime_lock(real_bd)
    first = real_bd.create("first", assignee="agent", acceptance="x", priority=0)
    second = real_bd.create("second", assignee="agent", acceptance="x", priority=1)
    beadboard.health.capacity = 2
    beadboard.set_handler(
        "/api/agent-dispatch", lambda request: Reply(json={"job_id": "slow"}, delay=1.0)
    )
    env = real_env(
        real_bd,
        beadboard.url,
        AGENT_HEALTH_URL=f"{beadboard.url}/health",
        HTTP_TIMEOUT_SECONDS="10",
    )
    process = start_jobs(["dispatch"], env)
    beadboard.wait_for("/api/agent-dispatch", count=1, timeout=60)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stdout + stderr
    assert real_bd.show(first)["status"] == "in_progress"
    assert notes(real_bd, first)[-1].startswith("dispatched: job=slow")
    state = real_bd.show(second)
    assert state["status"] == "open"
    assert "auto_dispatch_stage" not in state.get("metadata", {})
    assert notes(real_bd, second)[-1].startswith("not dispatched: the dispatcher was asked to stop")
    assert len(beadboard.requests_to("/api/agent-dispatch")) == 1
