"""jobs/database.py against the real bd 1.0.2, one rule per case: the beads dir, mode, host,
port and database resolved here are the ones `bd --db <path> context --json` reports.

`bd context` reads the config files without opening the database, so a server-mode
metadata.json needs no server. It prints `server_host`/`server_port` only in server mode,
and `dolt_mode` as written in the file (not as bd reads it). Both bd and the resolver run
from a working directory outside the project (a git repo of its own: `bd context` needs
one), so nothing is found by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.bd import RealBd
from jobs.database import beads_dir_for, resolve

SERVER = {"dolt_mode": "server", "dolt_server_host": "dolt.example", "dolt_server_port": 3306}


@dataclass(frozen=True)
class Case:
    db: str = ".beads"  # BEADS_DB, relative to the project
    metadata: dict[str, Any] | None = None  # replaces the project's metadata.json
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # more files, relative to the root
    mkdir: tuple[str, ...] = ()


CASES = {
    "beads-dir": Case(),
    "sibling-dir": Case(db="dispatcher-2", mkdir=("dispatcher-2",)),
    "nested-dir": Case(db="sub/deeper", mkdir=("sub/deeper",)),
    "beads-db-path": Case(db=".beads/beads.db"),
    "dir-with-metadata-any-name": Case(
        db="../elsewhere/pod-beads", metadata=None, files={"elsewhere/pod-beads/metadata.json": ""}
    ),
    "mode-Server": Case(metadata={**SERVER, "dolt_mode": "Server"}),
    "mode-SERVER": Case(metadata={**SERVER, "dolt_mode": "SERVER"}),
    "keys-any-case": Case(
        metadata={"DOLT_MODE": "server", "Dolt_Server_Host": "h.example", "DOLT_SERVER_PORT": 4000}
    ),
    "duplicate-keys-last-wins": Case(
        metadata={**SERVER, "dolt_database": "first", "DOLT_DATABASE": "last"}
    ),
    "defaults": Case(metadata={"dolt_mode": "server", "dolt_server_port": 3306}),
    "env-server-mode": Case(
        metadata={"dolt_mode": "embedded", "dolt_server_port": 3306},
        env={"BEADS_DOLT_SERVER_MODE": "1"},
    ),
    "env-shared-server": Case(
        metadata={"dolt_database": "code"},
        env={"BEADS_DOLT_SHARED_SERVER": "1", "BEADS_SHARED_SERVER_DIR": "{root}/shared"},
        mkdir=("../shared",),
    ),
    "env-shared-server-port-file": Case(
        metadata={"dolt_database": "code"},
        env={"BEADS_DOLT_SHARED_SERVER": "true", "BEADS_SHARED_SERVER_DIR": "{root}/shared"},
        files={"shared/dolt-server.port": "4100"},
    ),
    "env-host": Case(metadata=SERVER, env={"BEADS_DOLT_SERVER_HOST": "other.example"}),
    "env-port-beats-port-file": Case(
        metadata=SERVER,
        env={"BEADS_DOLT_SERVER_PORT": "4200"},
        files={"project/.beads/dolt-server.port": "4201"},
    ),
    "port-file-beats-metadata": Case(
        metadata=SERVER, files={"project/.beads/dolt-server.port": "4300\n"}
    ),
    "env-database": Case(metadata=SERVER, env={"BEADS_DOLT_SERVER_DATABASE": "code"}),
    "env-database-embedded": Case(env={"BEADS_DOLT_SERVER_DATABASE": "code"}),
}


def bd_context(bd: RealBd, db: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [str(bd.binary), "--db", str(db), "context", "--json"],
        env={**bd.env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    context: dict[str, Any] = json.loads(completed.stdout)
    return context


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_database_resolved_is_the_one_bd_reports(real_bd: RealBd, case: Case) -> None:
    project = real_bd.workdir
    root = project.parent
    env = {key: value.format(root=root) for key, value in case.env.items()}
    metadata_file = project / ".beads" / "metadata.json"
    written = json.loads(metadata_file.read_text())
    if case.metadata is not None:
        metadata_file.write_text(json.dumps(case.metadata), encoding="utf-8")
    for directory in case.mkdir:
        (project / directory).mkdir(parents=True)
    for name, text in case.files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text or json.dumps(written), encoding="utf-8")
    db = Path(os.path.normpath(project / case.db))
    # A git repo of its own: `bd context` needs one around its working directory.
    neutral = root / "neutral"
    neutral.mkdir()
    subprocess.run(["git", "init", "-q", str(neutral)], check=True, timeout=30)
    context = bd_context(real_bd, db, env, neutral)
    environ = {**real_bd.env(), **env}
    ours_dir = beads_dir_for(db, environ, cwd=neutral)
    assert ours_dir.resolve() == Path(context["beads_dir"]).resolve()
    if not db.exists():
        return  # the jobs refuse it (no such directory): only bd's mapping is compared
    ours = resolve(db, environ, cwd=neutral)
    server = ours.server
    theirs = (context.get("server_host"), context.get("server_port"), context["database"])
    mine = (server.host, server.port, ours.name) if server else (None, None, ours.name)
    assert mine == theirs, context
