"""Watch windows, drain, every agent slot, pause mid-window and SIGTERM (fake bd + stub)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from localservices.beadboard import BeadBoardStub, Reply
from pods.process import start_jobs
from tests.conftest import JobRunner, agent_bead, comments_of
from tests.support.fixtures import FakeBdEnv

DISPATCH = "/api/agent-dispatch"
FAST = {"DISPATCH_WINDOW_SECONDS": "3", "POLL_INTERVAL_SECONDS": "0.2"}


def test_idle_window_polls_with_one_bd_call_and_no_http(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    fake_bd.api.create("a human's", assignee="alice", acceptance="x")
    result = run_job("dispatch", **FAST)
    assert result.code == 0
    summary = result.summary
    assert summary["polls"] >= 5
    assert summary["idle_polls"] == summary["polls"]
    assert [c["subcommand"] for c in fake_bd.calls()] == ["query"] * summary["polls"]
    assert beadboard.requests == []


def test_window_zero_is_one_pass(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    result = run_job("dispatch", DISPATCH_WINDOW_SECONDS="0", POLL_INTERVAL_SECONDS="0.1")
    assert result.summary["polls"] == 1


def test_single_slot_drains_the_queue_within_one_run(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    beads = [agent_bead(api, f"b{i}", priority=i) for i in range(3)]
    # One agent slot that frees 0.5 s after each dispatch.
    busy_until = [0.0]

    def status(request: object) -> Reply:
        return Reply(json={"busy": time.monotonic() < busy_until[0]})

    def dispatch(request: object) -> Reply:
        busy_until[0] = time.monotonic() + 0.5
        return Reply(json={"job_id": f"job-{len(beadboard.requests_to(DISPATCH))}"})

    beadboard.set_handler("/api/agent-status", status)
    beadboard.set_handler(DISPATCH, dispatch)
    result = run_job("dispatch", DISPATCH_WINDOW_SECONDS="5", POLL_INTERVAL_SECONDS="0.2")
    assert result.code == 0, result.stdout
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == beads
    assert all(api.get(b)["status"] == "in_progress" for b in beads)


def test_health_url_fills_every_free_slot_in_one_poll(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    beads = [agent_bead(api, f"b{i}", priority=i % 5) for i in range(5)]
    beads.sort(key=lambda b: api.get(b)["priority"])
    beadboard.health.capacity = 10
    beadboard.health.active = 6  # four free slots
    result = run_job("dispatch", AGENT_HEALTH_URL=f"{beadboard.url}/health")
    assert result.code == 0, result.stdout
    assert result.summary["polls"] == 1
    assert len(result.summary["dispatched"]) == 4
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == beads[:4]
    assert beadboard.requests_to("/api/agent-status") == []


def test_max_in_flight_caps_the_slots(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    for i in range(5):
        agent_bead(api, f"b{i}")
    beadboard.health.capacity = 10
    beadboard.health.active = 1
    result = run_job("dispatch", AGENT_HEALTH_URL=f"{beadboard.url}/health", MAX_IN_FLIGHT="3")
    assert len(result.summary["dispatched"]) == 2


def test_a_failed_bead_is_not_retried_within_the_same_window(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, run_job: JobRunner
) -> None:
    api = fake_bd.api
    bead = agent_bead(api)
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=500, json={"error": "x"}))
    result = run_job("dispatch", **FAST)
    assert result.code == 1
    assert len(beadboard.requests_to(DISPATCH)) == 1
    assert api.get(bead)["status"] == "open"


def _events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_pause_reaches_a_running_window(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, jobs_env: dict[str, str], tmp_path: Path
) -> None:
    api = fake_bd.api
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "AUTODISPATCH_ENABLED").write_text("true")
    env = {
        **jobs_env,
        "AUTODISPATCH_RUNTIME_DIR": str(runtime),
        "DISPATCH_WINDOW_SECONDS": "30",
        "POLL_INTERVAL_SECONDS": "0.2",
    }
    started = time.monotonic()
    process = start_jobs(["dispatch"], env)
    time.sleep(1.5)
    # What the kubelet does when `pulumi up` changes the mounted ConfigMap.
    (runtime / "AUTODISPATCH_ENABLED").write_text("false")
    time.sleep(0.5)
    late = agent_bead(api, "assigned after the pause")
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert time.monotonic() - started < 10
    assert any(e["event"] == "run.paused" for e in _events(stdout))
    assert api.get(late)["status"] == "open"
    assert beadboard.requests_to(DISPATCH) == []


def test_sigterm_while_idle_exits_promptly(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, jobs_env: dict[str, str]
) -> None:
    process = start_jobs(
        ["dispatch"], {**jobs_env, "DISPATCH_WINDOW_SECONDS": "60", "POLL_INTERVAL_SECONDS": "5"}
    )
    time.sleep(1.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert time.monotonic() - sent < 3
    assert process.returncode == 0
    assert _events(stdout)[-1]["outcome"] == "stopped"


def test_sigterm_mid_dispatch_finishes_the_bead_in_hand_and_claims_no_more(
    fake_bd: FakeBdEnv, beadboard: BeadBoardStub, jobs_env: dict[str, str]
) -> None:
    api = fake_bd.api
    first, second = agent_bead(api, "first", priority=0), agent_bead(api, "second", priority=1)
    second_before = api.get(second)
    beadboard.health.capacity = 2
    beadboard.set_handler(DISPATCH, lambda request: Reply(json={"job_id": "slow"}, delay=1))
    process = start_jobs(["dispatch"], {**jobs_env, "AGENT_HEALTH_URL": f"{beadboard.url}/health"})
    beadboard.wait_for(DISPATCH, count=1, timeout=20)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stdout + stderr
    assert len(beadboard.requests_to(DISPATCH)) == 1
    assert api.get(first)["status"] == "in_progress"
    assert "auto_dispatch_stage" not in api.get(first).get("metadata", {})
    assert comments_of(api, first)[-1].startswith("dispatched: job=slow")
    # One bead in hand at a time: the second was never claimed, so there is nothing to undo.
    assert api.get(second) == second_before
    assert any(e["event"] == "run.stopping" for e in _events(stdout))
    assert _events(stdout)[-1]["dispatched"] == [first]
