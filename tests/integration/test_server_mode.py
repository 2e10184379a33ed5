"""Production's shape: bd in server mode against a real `dolt sql-server` on loopback.

The jobs get the metadata.json the component renders (only host and port pointed here),
copied from a read-only path as in the pod, and the Dolt password through the env var a
`secretKeyRef` would fill.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.auto_dispatch import BD_CONFIG_NAME
from tests.conftest import ROOT, JobRun, base_env, run_jobs
from tests.pulumi_harness import render_program
from tests.realbd import PRIME_LOCK_COMMANDS
from tests.support.beadboard_stub import BeadBoardStub

DOLT_USER = "beads"
DOLT_PASSWORD = "dolt-test-password"  # a throw-away server on loopback
DATABASE = "code"


@dataclass
class DoltServer:
    port: int
    home: Path
    bd: Path
    metadata_file: Path

    def bd_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "BEADS_DOLT_PASSWORD": DOLT_PASSWORD,
            "BEADS_ACTOR": "tester",
        }

    def bd_run(self, beads_dir: Path, *args: str) -> str:
        completed = subprocess.run(
            [str(self.bd), "--db", str(beads_dir), *args],
            env=self.bd_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr + completed.stdout
        return completed.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"dolt sql-server did not listen on {port} within {seconds}s")


@pytest.fixture(scope="module")
def dolt_server(bd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoltServer]:
    built = subprocess.run(
        [str(ROOT / "tools" / "build-dolt.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if built.returncode != 0:
        pytest.fail(f"cannot build dolt: {built.stderr.strip()}")
    dolt = built.stdout.strip()
    root = tmp_path_factory.mktemp("dolt")
    home, data = root / "home", root / "data"
    home.mkdir()
    data.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    for key, value in (("user.name", "tests"), ("user.email", "tests@example.invalid")):
        subprocess.run(
            [dolt, "config", "--global", "--add", key, value],
            env=env,
            check=True,
            capture_output=True,
        )
    port = _free_port()
    server = subprocess.Popen(
        [dolt, "sql-server", "--host", "127.0.0.1", "--port", str(port)],
        cwd=data,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 60)
        sql = (
            f"CREATE DATABASE {DATABASE}; "
            f"CREATE USER '{DOLT_USER}'@'%' IDENTIFIED BY '{DOLT_PASSWORD}'; "
            f"GRANT ALL ON *.* TO '{DOLT_USER}'@'%';"
        )
        subprocess.run(
            [
                dolt,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--user",
                "root",
                "--no-tls",
                "--password",
                "",
                "sql",
                "-q",
                sql,
            ],
            cwd=data,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        # bd creates its schema in the server database, as an operator did once in production.
        project = root / "project"
        project.mkdir()
        subprocess.run(
            [
                str(bd_binary),
                "init",
                "--server",
                "--server-host",
                "127.0.0.1",
                "--server-port",
                str(port),
                "--server-user",
                DOLT_USER,
                "--database",
                DATABASE,
                "--prefix",
                "srv",
                "--external",
                "--quiet",
                "--non-interactive",
                "--skip-agents",
                "--skip-hooks",
            ],
            cwd=project,
            env={**env, "BEADS_DOLT_PASSWORD": DOLT_PASSWORD},
            check=True,
            capture_output=True,
            timeout=120,
        )
        rendered = render_program(
            {
                "doltHost": "127.0.0.1",
                "doltPort": str(port),
                "doltPasswordSecretName": "dolt",
                "doltPasswordSecretKey": "pw",
            }
        )
        mounted = root / "mounted" / "metadata.json"
        mounted.parent.mkdir()
        mounted.write_text(rendered.configmap(BD_CONFIG_NAME)["data"]["metadata.json"])
        mounted.chmod(0o444)
        server_info = DoltServer(port, home, bd_binary, mounted)
        # The lock bead, as a first dispatcher run would leave it.
        client_dir = root / "client"
        client_dir.mkdir()
        (client_dir / "metadata.json").write_text(mounted.read_text())
        for command in PRIME_LOCK_COMMANDS:
            server_info.bd_run(client_dir, *command)
        yield server_info
    finally:
        server.terminate()
        server.wait(timeout=30)


def _job(
    server: DoltServer, tmp_path: Path, board: BeadBoardStub, *args: str, **extra: str
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
    return run_jobs(list(args), env | extra)


def _show(server: DoltServer, tmp_path: Path, bead: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(
        server.bd_run(tmp_path / "pod-beads", "show", bead, "--json")
    )
    return rows[0]


def test_dispatch_happy_path_in_server_mode(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    client = tmp_path / "pod-beads"
    client.mkdir()
    (client / "metadata.json").write_text(dolt_server.metadata_file.read_text())
    bead = dolt_server.bd_run(
        client,
        "create",
        "server-mode task",
        "--assignee",
        "agent",
        "--acceptance",
        "works",
        "--priority",
        "0",
        "--silent",
    ).strip()
    result = _job(dolt_server, tmp_path, beadboard, "dispatch")
    assert result.code == 0, result.stdout + result.stderr
    assert [r.json for r in beadboard.requests_to("/api/agent-dispatch")] == [{"taskId": bead}]
    state = _show(dolt_server, tmp_path, bead)
    assert state["status"] == "in_progress"
    assert state["notes"].splitlines()[-1].startswith("dispatched: job=")
    assert DOLT_PASSWORD not in result.stdout + result.stderr


def test_reap_happy_path_in_server_mode(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    client = tmp_path / "pod-beads"
    client.mkdir()
    (client / "metadata.json").write_text(dolt_server.metadata_file.read_text())
    bead = dolt_server.bd_run(
        client,
        "create",
        "stuck in server mode",
        "--assignee",
        "agent",
        "--acceptance",
        "works",
        "--silent",
    ).strip()
    dolt_server.bd_run(client, "update", bead, "--status", "in_progress")
    updated = datetime.fromisoformat(_show(dolt_server, tmp_path, bead)["updated_at"])
    later = (updated + timedelta(minutes=45)).isoformat()
    result = _job(dolt_server, tmp_path, beadboard, "reap", AUTODISPATCH_NOW=later)
    assert result.code == 0, result.stdout + result.stderr
    assert bead in result.summary["blocked"]
    state = _show(dolt_server, tmp_path, bead)
    assert state["status"] == "blocked"
    assert state["notes"].splitlines()[-1].startswith("reaper: no progress for 45m")


def test_wrong_password_is_a_clean_failure(
    dolt_server: DoltServer, tmp_path: Path, beadboard: BeadBoardStub
) -> None:
    result = _job(dolt_server, tmp_path, beadboard, "dispatch", BEADS_DOLT_PASSWORD="wrong")
    assert result.code == 1
    failed = result.event("tick.failed")
    assert "Access denied" in failed["error"]
    assert "Traceback" not in result.stderr
    assert beadboard.requests == []
