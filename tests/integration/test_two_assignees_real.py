"""Two dispatchers for different assignees on one Dolt database, as real processes with the
real bd 1.0.2 in server mode: each sends only its own beads to its own BeadBoard, and one
assignee's lock held (a dispatcher mid-hand-off) does not stall the other."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DATABASE, DOLT_PASSWORD, DOLT_USER, DoltServer
from devtools.pods.process import base_env, start_jobs
from jobs.lock import DoltNamedLock
from tests.support.harness import posted

pytestmark = pytest.mark.integration


def pod_env(server: DoltServer, pod: Path, board: BeadBoardStub, assignee: str) -> dict[str, str]:
    (pod / "home").mkdir(parents=True, exist_ok=True)
    return base_env(
        HOME=str(pod / "home"),
        BD_BIN=str(server.bd),
        BEADS_DB=str(pod / "beads"),
        BEADS_METADATA_FILE=str(server.metadata_file),
        BEADS_DOLT_PASSWORD=DOLT_PASSWORD,
        BEADBOARD_URL=board.url,
        # Every free slot filled in one poll: both beads of a queue go in one run.
        AGENT_HEALTH_URL=f"{board.url}/health",
        AGENT_ASSIGNEE=assignee,
        HTTP_TIMEOUT_SECONDS="5",
    )


def dispatch(server: DoltServer, pod: Path, board: BeadBoardStub, assignee: str) -> dict[str, Any]:
    """One dispatcher run to its end; its `tick.done` summary."""
    out, _ = start_jobs(["dispatch"], pod_env(server, pod, board, assignee)).communicate(
        timeout=120
    )
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done: dict[str, Any] = next(e for e in events if e["event"] == "tick.done")
    done["events"] = [e["event"] for e in events]
    return done


def test_each_dispatcher_sends_its_own_beads_and_a_held_lock_stalls_only_its_own(
    dolt_server: DoltServer, tmp_path: Path
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")

    def create(assignee: str) -> str:
        return dolt_server.bd_run(
            client, "create", f"for {assignee}", "--assignee", assignee,
            "--acceptance", "x", "--silent",
        ).strip()  # fmt: skip

    coder_beads = sorted(create("agent") for _ in range(2))
    reviewer_beads = sorted(create("reviewer") for _ in range(2))
    # The `agent` dispatcher's lock, held as it is mid-hand-off.
    agents_lock = DoltNamedLock("127.0.0.1", dolt_server.port, DOLT_USER, DOLT_PASSWORD, DATABASE)
    with BeadBoardStub() as coder_board, BeadBoardStub() as reviewer_board:
        coder_board.health.capacity = reviewer_board.health.capacity = 10
        assert agents_lock.try_acquire()
        try:
            started = time.monotonic()
            reviewer = dispatch(dolt_server, tmp_path / "reviewer", reviewer_board, "reviewer")
            reviewer_seconds = time.monotonic() - started
            stalled = dispatch(dolt_server, tmp_path / "coder-1", coder_board, "agent")
        finally:
            agents_lock.release()
        coder = dispatch(dolt_server, tmp_path / "coder-2", coder_board, "agent")
        sent_to_coder, sent_to_reviewer = (
            sorted(posted(coder_board)),
            sorted(posted(reviewer_board)),
        )
    print(f"\nreviewer run with `agent`'s lock held: {reviewer_seconds:.1f} s")
    assert sorted(reviewer["dispatched"]) == reviewer_beads, reviewer
    assert "lock.busy" not in reviewer["events"], reviewer
    assert (stalled["outcome"], stalled["dispatched"]) == ("lock_busy", []), stalled
    assert sorted(coder["dispatched"]) == coder_beads, coder
    assert (sent_to_coder, sent_to_reviewer) == (coder_beads, reviewer_beads)
    for bead, assignee in [(b, "agent") for b in coder_beads] + [
        (b, "reviewer") for b in reviewer_beads
    ]:
        state = json.loads(dolt_server.bd_run(client, "show", bead, "--json"))[0]
        assert (state["status"], state["assignee"]) == ("in_progress", assignee), state
