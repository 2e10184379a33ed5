"""A real `dolt sql-server` on loopback with a beads schema: production's shape, locally.

Used by the server-mode integration tests and by the benchmark's load figures. The jobs
reach it through the metadata.json the component renders (only host and port changed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from components.auto_dispatch import bd_metadata_json
from components.config import settings_from
from devtools.localservices.bd import build_tool, go_runtime_env
from devtools.ports import free_port

DOLT_USER = "beads"
DOLT_PASSWORD = "dolt-test-password"  # noqa: S105 (a throw-away server on loopback)
DATABASE = "code"


@dataclass
class DoltServer:
    port: int
    home: Path
    bd: Path
    metadata_file: Path
    """The rendered metadata.json, read-only, as the pod mounts it."""

    def bd_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "BEADS_DOLT_PASSWORD": DOLT_PASSWORD,
            "BEADS_ACTOR": "tester",
            **go_runtime_env(),
        }

    def client_dir(self, path: Path) -> Path:
        """A beads dir holding the rendered metadata.json, for the tests' and bench's bd calls."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "metadata.json").write_text(self.metadata_file.read_text())
        return path

    def bd_run(self, beads_dir: Path, *args: str, timeout: float = 120) -> str:
        completed = subprocess.run(
            [str(self.bd), "--db", str(beads_dir), *args],
            env=self.bd_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise AssertionError(completed.stderr + completed.stdout)
        return completed.stdout


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"dolt sql-server did not listen on {port} within {seconds}s")


@contextmanager
def dolt_server(bd: Path, root: Path) -> Iterator[DoltServer]:
    """Start the server, create the database, a password user and bd's schema."""
    dolt = str(build_tool("dolt"))
    home, data, project = root / "home", root / "data", root / "project"
    for directory in (home, data, project):
        directory.mkdir(parents=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    for key, value in (("user.name", "tests"), ("user.email", "tests@example.invalid")):
        subprocess.run(
            [dolt, "config", "--global", "--add", key, value],
            env=env,
            check=True,
            capture_output=True,
        )
    port = free_port()
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
        subprocess.run(
            [
                str(bd),
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
        # What the component puts in its ConfigMap (tests/test_component.py checks the two
        # agree); no Pulumi mocks here, so this also works off the main thread.
        settings = settings_from({"doltHost": "127.0.0.1", "doltPort": str(port)})
        mounted = root / "mounted" / "metadata.json"
        mounted.parent.mkdir()
        mounted.write_text(bd_metadata_json(settings))
        mounted.chmod(0o444)
        info = DoltServer(port, home, bd, mounted)
        yield info
    finally:
        server.terminate()
        server.wait(timeout=30)
