"""The bench's idle windows: one watch-window run with nothing to do, server and embedded
mode, started as a container runtime would start it; figures from its `tick.done`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from components.config import BeadsAutoDispatchArgs
from devtools.bench.agent_sim import AgentSimulator
from devtools.bench.measure import fresh_db, job_env, peak_rss_mib, poll_env, server_job_env
from devtools.localservices.dolt import dolt_server
from devtools.pods.process import JobRun, run_jobs


def _idle_figures(result: JobRun, requests: int, elapsed: float) -> dict[str, Any]:
    done = result.summary
    python_mib, child_mib = peak_rss_mib(done)
    return {
        "polls": done["polls"],
        "bd_calls": done["bd_calls"],
        "polls_without_bd": done["polls_without_bd"],
        "requests": requests,
        "seconds": elapsed,
        "poll_ms": done["poll_ms_median"],
        "quiet_ms": done["quiet_poll_ms_median"],
        "quiet_ms_p95": done["quiet_poll_ms_p95"],
        "quiet_ms_max": done["quiet_poll_ms_max"],
        "python_mib": python_mib,
        "child_mib": child_mib,
        "signal": done["change_signal"],
    }


def idle_server(
    binary: Path, root: Path, name: str, settings: BeadsAutoDispatchArgs, window: int, others: int
) -> dict[str, Any]:
    """One idle watch window against a dolt sql-server holding `others` beads of a human."""
    human = root / f"{name}-idle.jsonl"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = [
        {
            "id": f"srv-idle{index:05d}",
            "title": f"human {index}",
            "status": "open",
            "priority": 2,
            "issue_type": "task",
            "assignee": "alice",
            "acceptance_criteria": "x",
            "created_at": now,
            "updated_at": now,
        }
        for index in range(others)
    ]
    human.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with dolt_server(binary, root / f"{name}-idle-dolt") as server:
        server.bd_run(server.client_dir(root / f"{name}-idle-client"), "import", str(human))
        with AgentSimulator(capacity=1, run_seconds=1) as agent:
            env = server_job_env(
                server,
                root,
                f"{name}-idle",
                agent.url,
                DISPATCHER_WINDOW_SECONDS=str(window),
                **poll_env(settings),
            )
            started = time.monotonic()
            result = run_jobs(["dispatch"], env, timeout=window + 120, forked_by_shell=True)
            elapsed = time.monotonic() - started
            requests = len(agent.stub.requests)
    return _idle_figures(result, requests, elapsed)


def idle_embedded(
    binary: Path, root: Path, settings: BeadsAutoDispatchArgs, window: int, others: int
) -> dict[str, Any]:
    """The same in embedded mode: the detector watches the store's manifest."""
    bd = fresh_db(binary, root, "idle")
    bd.create_many(
        [
            {"title": f"human {i}", "assignee": "alice", "acceptance_criteria": "x"}
            for i in range(others)
        ]
    )
    with AgentSimulator(capacity=1, run_seconds=1) as agent:
        env = job_env(bd, agent.url, DISPATCHER_WINDOW_SECONDS=str(window), **poll_env(settings))
        started = time.monotonic()
        result = run_jobs(["dispatch"], env, timeout=window + 120, forked_by_shell=True)
        elapsed = time.monotonic() - started
        requests = len(agent.stub.requests)
    return _idle_figures(result, requests, elapsed)
