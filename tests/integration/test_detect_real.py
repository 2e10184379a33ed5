"""The change detector against the real stores: a dolt 1.84.0 sql-server and bd 1.0.2's
embedded Dolt. A bd write from another process moves the signal, a bd read does not, and a
watch window runs bd only when something was written."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from devtools.bench.agent_sim import AgentSimulator
from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DATABASE, DOLT_PASSWORD, DOLT_USER, DoltServer
from devtools.pods.process import base_env, run_jobs, start_jobs
from jobs.detect import DoltHash, SignalMissed, SignalUnavailable, StoreManifest
from jobs.lock import DoltNamedLock
from tests.integration.conftest import real_env

WRITES = [
    ("update", "--assignee", "agent"),
    ("update", "--set-metadata", "k=v"),
    ("note", "a note"),
    ("comments", "add", "a comment"),
    ("update", "--status", "closed"),
]
READS = [
    ("query", "assignee=agent AND status=open", "--limit", "0", "--json"),
    ("ready", "--limit", "0", "--json"),
    ("show", "--json"),
    ("list", "--json"),
]


def _args(command: tuple[str, ...], bead: str) -> list[str]:
    """bd's argv with the bead id where it goes (after the subcommand words)."""
    words = 2 if command[0] == "comments" else 1
    if command[0] in ("query", "ready", "list"):
        return list(command)
    return [*command[:words], bead, *command[words:]]


# -- server mode --------------------------------------------------------------------------


@pytest.fixture
def session_lock(dolt_server: DoltServer) -> Iterator[DoltNamedLock]:
    """The dispatcher's lock, whose Dolt session the detector asks on."""
    lock = DoltNamedLock("127.0.0.1", dolt_server.port, DOLT_USER, DOLT_PASSWORD, DATABASE)
    yield lock
    lock.release()
    lock.session.close()


def _bead(server: DoltServer, client: Path) -> str:
    return server.bd_run(client, "create", "watched", "--acceptance", "x", "--silent").strip()


@pytest.mark.parametrize("write", WRITES, ids=lambda w: " ".join(w[:2]))
def test_a_bd_write_elsewhere_moves_the_hash_the_kept_session_sees(
    dolt_server: DoltServer, tmp_path: Path, session_lock: DoltNamedLock, write: tuple[str, ...]
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")
    bead = _bead(dolt_server, client)
    signal = DoltHash(session_lock.session)
    before = signal.value()
    session = session_lock.session.scalar("SELECT CONNECTION_ID()")
    dolt_server.bd_run(client, *_args(write, bead))
    assert signal.value() != before
    # The same long-lived session (autocommit: each SELECT sees the last commit), not a new one.
    assert session_lock.session.scalar("SELECT CONNECTION_ID()") == session


def test_bd_reads_leave_the_hash_alone(
    dolt_server: DoltServer, tmp_path: Path, session_lock: DoltNamedLock
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")
    bead = _bead(dolt_server, client)
    signal = DoltHash(session_lock.session)
    before = signal.value()
    for read in READS:
        dolt_server.bd_run(client, *_args(read, bead))
    assert signal.value() == before


def test_the_hash_moves_across_the_lock_held_and_released_on_its_session(
    dolt_server: DoltServer, tmp_path: Path, session_lock: DoltNamedLock
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")
    bead = _bead(dolt_server, client)
    signal = DoltHash(session_lock.session)
    before = signal.value()
    assert session_lock.try_acquire()
    dolt_server.bd_run(client, "note", bead, "written while the lock is held")
    assert session_lock.held()
    session_lock.release()
    assert signal.value() != before
    assert session_lock.try_acquire()  # released for real: the session takes it again


class _BeforeHashofDb(DoltHash):
    """What a Dolt older than DOLT_HASHOF_DB answers: its own "function not found" (1105);
    dolt 1.84.0 gives a user no grant that refuses the function, so this is the refusal."""

    QUERY = "SELECT DOLT_HASHOF_DB_NOT_IN_THIS_SERVER()"


def test_a_server_without_the_function_makes_the_signal_unavailable(
    dolt_server: DoltServer, session_lock: DoltNamedLock
) -> None:
    with pytest.raises(SignalUnavailable, match="not found"):
        _BeforeHashofDb(session_lock.session).value()
    # The session survives the refusal: the lock still works on it.
    assert session_lock.try_acquire()
    assert session_lock.held()


def test_a_dropped_session_is_missed_once_then_asked_again_on_a_new_one(
    dolt_server: DoltServer, session_lock: DoltNamedLock
) -> None:
    signal = DoltHash(session_lock.session)
    before = signal.value()
    killed = session_lock.session.scalar("SELECT CONNECTION_ID()")
    admin = pymysql.connect(
        host="127.0.0.1", port=dolt_server.port, user=DOLT_USER, password=DOLT_PASSWORD
    )
    with admin.cursor() as cursor:
        cursor.execute(f"KILL {int(killed)}")
    admin.close()
    with pytest.raises(SignalMissed):
        signal.value()
    assert signal.value() == before  # nothing written meanwhile
    assert session_lock.session.scalar("SELECT CONNECTION_ID()") != killed


def _server_env(server: DoltServer, tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    home = tmp_path / "pod-home"
    home.mkdir(exist_ok=True)
    env = base_env(
        HOME=str(home),
        BD_BIN=str(server.bd),
        BEADS_DB=str(tmp_path / "pod-beads"),
        BEADS_METADATA_FILE=str(server.metadata_file),
        BEADS_DOLT_PASSWORD=DOLT_PASSWORD,
        BEADBOARD_URL=url,
    )
    return env | extra


def test_a_server_mode_window_reads_with_bd_only_after_a_write(
    dolt_server: DoltServer, tmp_path: Path
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")
    bead = _bead(dolt_server, client)
    # An assignee of this test's own: the module's server holds other tests' agent beads.
    assignee = "watcher"
    with AgentSimulator(capacity=10, run_seconds=0.2) as agent:
        env = _server_env(
            dolt_server,
            tmp_path,
            agent.url,
            DISPATCHER_WINDOW_SECONDS="120",
            POLL_INTERVAL_SECONDS="1",
            AGENT_HEALTH_URL=f"{agent.url}/health",
            AGENT_ASSIGNEE=assignee,
        )
        process = start_jobs(["dispatch"], env)
        time.sleep(4)
        dolt_server.bd_run(client, "update", bead, "--assignee", assignee)
        # A loaded machine slows every bd call: wait for the dispatch, then for the read its
        # own writes cause and a few quiet polls, and end the window (SIGTERM).
        deadline = time.monotonic() + 60
        while not agent.dispatched_at() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(8)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=120)
        dispatched = agent.dispatched_at()
        health_asks = len(agent.stub.requests_to("/health"))
    summary = json.loads(stdout.splitlines()[-1])
    # How soon is the bench's figure (loaded machines make it a poor test bound).
    assert list(dispatched) == [bead]
    assert summary["change_signal"] == "dolt_hashof_db"
    # bd read at the first poll, after the assign, and after the dispatch's own writes.
    assert summary["polls"] - summary["polls_without_bd"] == 3
    assert health_asks == 1  # asked once, when a bead was ready to go


# -- embedded mode ------------------------------------------------------------------------


@pytest.mark.parametrize("write", WRITES, ids=lambda w: " ".join(w[:2]))
def test_a_bd_write_moves_the_embedded_manifest(real_bd: RealBd, write: tuple[str, ...]) -> None:
    bead = real_bd.create("watched", acceptance="x")
    signal = StoreManifest(real_bd.beads_dir)
    before = signal.value()
    real_bd.run(*_args(write, bead))
    assert signal.value() != before


def test_bd_reads_leave_the_embedded_manifest_alone(real_bd: RealBd) -> None:
    bead = real_bd.create("watched", acceptance="x")
    signal = StoreManifest(real_bd.beads_dir)
    before = signal.value()
    manifests = list(real_bd.beads_dir.glob("embeddeddolt/*/.dolt/noms/manifest"))
    touched = [m.stat().st_mtime_ns for m in manifests]
    for read in READS:
        real_bd.run(*_args(read, bead))
    assert signal.value() == before
    # bd rewrites the file on every open, reads too: its bytes, not its time, are the signal.
    assert [m.stat().st_mtime_ns for m in manifests] != touched


def test_an_embedded_idle_window_runs_bd_once(real_bd: RealBd, beadboard: BeadBoardStub) -> None:
    real_bd.create("a human's", assignee="alice", acceptance="x")
    result = run_jobs(
        ["dispatch"],
        real_env(real_bd, beadboard.url, DISPATCHER_WINDOW_SECONDS="5", POLL_INTERVAL_SECONDS="1"),
    )
    summary = result.summary
    assert result.code == 0, result.stdout
    assert summary["change_signal"] == "manifest"
    assert summary["polls"] >= 4
    assert (summary["bd_calls"], summary["polls_without_bd"]) == (1, summary["polls"] - 1)
    assert beadboard.requests == []
