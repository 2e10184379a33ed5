"""claude-agent-service's /health (agentHealthUrl) is not BeadBoard: its faults say so."""

from __future__ import annotations

import pytest

from devtools.localservices.beadboard import BeadBoardStub
from jobs.beadboard import AgentHealth, AgentServiceError, BeadBoardError
from tests.support.harness import JobHarness, closed_port
from tests.support.memory_store import MemoryStore


def test_the_agent_service_down_is_logged_as_the_agent_service(
    harness: JobHarness, store: MemoryStore, beadboard: BeadBoardStub
) -> None:
    store.add()
    before = store.snapshot()
    run = harness.dispatch(agent_health_url=f"http://127.0.0.1:{closed_port()}/health")
    failed = run.event("tick.failed")
    assert (run.code, failed["kind"]) == (1, "AgentServiceError")
    assert failed["error"].startswith("claude-agent-service GET http://127.0.0.1:")
    assert (store.snapshot(), beadboard.requests) == (before, [])


def test_an_agent_service_error_is_no_beadboard_error() -> None:
    health = AgentHealth(f"http://127.0.0.1:{closed_port()}/health", timeout_seconds=1)
    with pytest.raises(AgentServiceError, match="connection failed") as caught:
        health.load()
    assert not isinstance(caught.value, BeadBoardError)
