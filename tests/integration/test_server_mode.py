"""Production's shape: bd in server mode against a real `dolt sql-server` on loopback.

The jobs get the metadata.json the component renders (only host and port pointed here),
copied from a read-only path as in the pod, and the Dolt password through the env var a
`secretKeyRef` would fill.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DOLT_PASSWORD, DoltServer
from devtools.pods.process import JobRun, base_env, run_jobs
from jobs.lock import LOCK_FILE_NAME
from tests.support.jobs_at import MODULE as JOBS_AT
from tests.support.jobs_at import at
from tests.support.routes import DISPATCH


def _job(
    server: DoltServer,
    tmp_path: Path,
    board: BeadBoardStub,
    *args: str,
    now: datetime | None = None,
    **extra: str,
) -> JobRun:
    home = tmp_path / "pod-home"
    home.mkdir(exist_ok=True)
    env = base_env(
        HOME=str(home),
        BD_BIN=str(server.bd),
        BEADS_DB=str(tmp_path / "pod-beads"),
        BEADS_METADATA_FILE=str(server.metadata_file),
        BEADS_DOLT_PASSWORD=DOLT_PASSWORD,
        BEADBOARD_URL=board.url,
    )
    if now is None:
        return run_jobs(list(args), env | extra)
    return run_jobs(at(now, *args), env | extra, module=JOBS_AT)


def _show(server: DoltServer, tmp_path: Path, bead: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(
        server.bd_run(tmp_path / "pod-beads", "show", bead, "--json")
    )
    return rows[0]


def _agent_bead(server: DoltServer, tmp_path: Path, title: str) -> str:
    client = server.client_dir(tmp_path / "pod-beads")
    return server.bd_run(
        client, "create", title, "--assignee", "agent", "--acceptance", "works", "--silent"
    ).strip()


def test_dispatch_happy_path_in_server_mode(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    bead = _agent_bead(dolt_server, tmp_path, "server-mode task")
    result = _job(dolt_server, tmp_path, beadboard, "dispatch")
    assert result.code == 0, result.stdout + result.stderr
    assert [r.json for r in beadboard.requests_to(DISPATCH)] == [{"taskId": bead}]
    state = _show(dolt_server, tmp_path, bead)
    assert state["status"] == "in_progress"
    assert state["notes"].splitlines()[-1].startswith("beads-dispatcher claimed at ")
    assert state["comments"][-1]["text"].startswith("dispatched: job=")
    # Server mode: the dispatch lock is a named lock on the same Dolt server, not a file.
    assert result.event("lock.acquired")["lock"].startswith("GET_LOCK('beads-autodispatch:")
    assert result.event("lock.released")["lock"] == result.event("lock.acquired")["lock"]
    assert not (tmp_path / "pod-beads" / LOCK_FILE_NAME).exists()
    assert DOLT_PASSWORD not in result.stdout + result.stderr


def test_reap_happy_path_in_server_mode(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    bead = _agent_bead(dolt_server, tmp_path, "stuck in server mode")
    dolt_server.bd_run(tmp_path / "pod-beads", "update", bead, "--status", "in_progress")
    updated = datetime.fromisoformat(_show(dolt_server, tmp_path, bead)["updated_at"])
    result = _job(dolt_server, tmp_path, beadboard, "reap", now=updated + timedelta(minutes=45))
    assert result.code == 0, result.stdout + result.stderr
    assert bead in result.summary["blocked"]
    state = _show(dolt_server, tmp_path, bead)
    assert state["status"] == "blocked"
    assert state["notes"].splitlines()[-1].startswith("beads-reaper: no progress for 45m")


def test_wrong_password_is_a_clean_failure(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    result = _job(dolt_server, tmp_path, beadboard, "dispatch", BEADS_DOLT_PASSWORD="wrong")
    assert result.code == 1
    failed = result.event("tick.failed")
    assert "Access denied" in failed["error"]
    assert "Traceback" not in result.stderr
    assert beadboard.requests == []
