"""`python3 -m jobs` and BEADS_DB: the lock goes on the database bd opens, and a
configuration bd cannot read ends in one line naming the file and the field (exit 2).

A scripted `bd` offers one ready bead to anything asked, so a run that gets past its
setup claims and POSTs it: these tests pass only when the setup stops it first.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub
from jobs import __main__ as cli
from jobs.lock import LOCK_FILE_NAME, FileLock
from tests.support.harness import NOW, closed_port
from tests.support.routes import DISPATCH

ROW = {
    "id": "tb-1",
    "title": "task",
    "status": "open",
    "priority": 2,
    "assignee": "agent",
    "acceptance_criteria": "it works",
    "created_at": "2026-03-01T00:00:00Z",
    "updated_at": "2026-03-01T00:00:00Z",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo whose `.beads` holds an embedded-mode metadata.json."""
    beads = tmp_path / "repo" / ".beads"
    beads.mkdir(parents=True)
    (beads / "metadata.json").write_text('{"backend": "dolt"}', encoding="utf-8")
    return tmp_path / "repo"


@pytest.fixture
def environ(tmp_path: Path, beadboard: BeadBoardStub) -> dict[str, str]:
    bd = tmp_path / "bd"
    bd.write_text(f"#!/bin/sh\necho '{json.dumps([ROW])}'\n", encoding="utf-8")
    bd.chmod(0o755)
    return {"BD_BIN": str(bd), "BEADBOARD_URL": beadboard.url, "HOME": str(tmp_path)}


def run(environ: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Any]:
    stream = io.StringIO()
    code = cli.main(["dispatch"], environ=environ, clock=lambda: NOW, stream=stream)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return code, capsys.readouterr().err, events


def test_a_second_spelling_of_the_database_takes_the_same_lock(
    repo: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (repo / "dispatcher-2").mkdir()
    other_run = FileLock(repo / ".beads" / LOCK_FILE_NAME)
    assert other_run.try_acquire()
    try:
        code, _, events = run({**environ, "BEADS_DB": str(repo / "dispatcher-2")}, capsys)
    finally:
        other_run.release()
    assert (code, events[-1]["outcome"]) == (0, "lock_busy")
    assert beadboard.requests_to(DISPATCH) == []
    assert not (repo / "dispatcher-2" / LOCK_FILE_NAME).exists()


def test_a_beads_db_that_does_not_exist_is_refused_not_created(
    repo: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    typo = repo / "dispatcher-2"
    code, stderr, _ = run({**environ, "BEADS_DB": str(typo)}, capsys)
    assert code == 2
    assert stderr == (
        f"configuration error: BEADS_DB {typo}: no such directory (bd would use "
        f"{repo / '.beads'}; if that is the database meant, set BEADS_DB to it)\n"
    )
    assert not typo.exists()
    assert beadboard.requests == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"dolt_mode": "Server"},
        {"DOLT_MODE": "server"},
        {"dolt_mode": "embedded", "BEADS_DOLT_SERVER_MODE": "1"},
        {"BEADS_DOLT_SHARED_SERVER": "true"},
    ],
    ids=["mode-casing", "key-casing", "server-mode-env", "shared-server-env"],
)
def test_server_mode_as_bd_reads_it_takes_the_dolt_lock(
    repo: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
    metadata: dict[str, str],
) -> None:
    """bd would talk to a Dolt server here: a per-pod flock would be no lock at all."""
    env = {k: v for k, v in metadata.items() if k.startswith("BEADS_")}
    fields: dict[str, Any] = {k: v for k, v in metadata.items() if k not in env}
    fields |= {"dolt_server_host": "127.0.0.1", "dolt_server_port": closed_port()}
    (repo / ".beads" / "metadata.json").write_text(json.dumps(fields), encoding="utf-8")
    code, _, events = run({**environ, **env, "BEADS_DB": str(repo / ".beads")}, capsys)
    assert code == 1
    [failed] = [e for e in events if e["event"] == "tick.failed"]
    assert failed["error"].startswith("cannot connect to Dolt at 127.0.0.1:")
    assert beadboard.requests_to(DISPATCH) == []
    assert not (repo / ".beads" / LOCK_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"dolt_server_port": "3306"}, 'dolt_server_port must be a whole number, got "3306"'),
        ({"dolt_server_tls": "true"}, 'dolt_server_tls must be true or false, got "true"'),
        ({"dolt_mode": "sever"}, "dolt_mode 'sever' is neither 'server' nor 'embedded'"),
    ],
)
def test_metadata_bd_cannot_read_is_one_line_naming_file_and_field(
    repo: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
    metadata: dict[str, Any],
    message: str,
) -> None:
    path = repo / ".beads" / "metadata.json"
    path.write_text(json.dumps(metadata), encoding="utf-8")
    code, stderr, _ = run({**environ, "BEADS_DB": str(repo / ".beads")}, capsys)
    assert code == 2
    [line] = stderr.splitlines()
    assert line.startswith(f"configuration error: {path}: {message}"), line
    assert beadboard.requests == []


def test_a_beads_db_with_no_metadata_beside_or_above_is_one_line(
    tmp_path: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lonely = tmp_path / "lonely" / "db"
    lonely.mkdir(parents=True)
    code, stderr, _ = run({**environ, "BEADS_DB": str(lonely)}, capsys)
    assert code == 2
    assert stderr.startswith(
        f"configuration error: BEADS_DB {lonely}: bd would read "
        f"{tmp_path / 'lonely' / 'metadata.json'}, which does not exist"
    )
    assert beadboard.requests == []


def test_the_pod_makes_its_beads_db_from_the_mounted_metadata(
    tmp_path: Path,
    environ: dict[str, str],
    beadboard: BeadBoardStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mounted = tmp_path / "mounted.json"
    mounted.write_text('{"backend": "dolt", "dolt_mode": "embedded"}', encoding="utf-8")
    pod = tmp_path / "scratch" / ".beads"
    env = {**environ, "BEADS_DB": str(pod), "BEADS_METADATA_FILE": str(mounted)}
    code, _, events = run(env, capsys)
    assert code == 0, events
    assert (pod / "metadata.json").read_text() == mounted.read_text()
    acquired = [e for e in events if e["event"] == "lock.acquired"]
    assert acquired[0]["lock"] == f"flock {pod / LOCK_FILE_NAME}"
