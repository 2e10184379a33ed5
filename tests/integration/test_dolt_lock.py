"""The production lock against a real `dolt sql-server`: GET_LOCK on the server, gone with
its holder's connection; and K dispatchers plus a reaper racing over one database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.localservices.beadboard import AGENT_DISPATCH, BeadBoardStub
from devtools.localservices.dolt import DATABASE, DOLT_PASSWORD, DOLT_USER, DoltServer
from devtools.paths import ROOT
from devtools.pods.process import base_env, start_jobs
from jobs.database import resolve
from jobs.lock import DoltNamedLock, lock_on
from tests.support.jobs_at import MODULE as JOBS_AT
from tests.support.jobs_at import at

DISPATCHERS = 4
ROUNDS = 20
BEADS_PER_ROUND = 2


def _lock(server: DoltServer) -> DoltNamedLock:
    return DoltNamedLock("127.0.0.1", server.port, DOLT_USER, DOLT_PASSWORD, DATABASE)


def test_the_rendered_metadata_selects_the_dolt_lock(
    dolt_server: DoltServer, tmp_path: Path
) -> None:
    beads_dir = dolt_server.client_dir(tmp_path / "beads")
    environ = {"BEADS_DOLT_PASSWORD": DOLT_PASSWORD}
    lock = lock_on(resolve(beads_dir, environ), environ)
    assert isinstance(lock, DoltNamedLock)
    assert (lock.host, lock.port, lock.user, lock.database) == (
        "127.0.0.1",
        dolt_server.port,
        DOLT_USER,
        DATABASE,
    )
    assert lock.try_acquire() and lock.held()
    lock.release()
    assert not lock.held()


def test_two_holders_exclude_each_other(dolt_server: DoltServer) -> None:
    first, second = _lock(dolt_server), _lock(dolt_server)
    assert first.try_acquire()
    try:
        started = time.monotonic()
        assert not second.try_acquire(wait_seconds=1.0)
        assert time.monotonic() - started >= 1.0
        assert first.held() and not second.held()
    finally:
        first.release()
    assert second.try_acquire()
    assert second.held()
    second.release()


HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from jobs.lock import DoltNamedLock
lock = DoltNamedLock("127.0.0.1", {port}, {user!r}, {password!r}, {database!r})
assert lock.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_holder_frees_the_lock_within_seconds(dolt_server: DoltServer) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER.format(
                root=str(ROOT),
                port=dolt_server.port,
                user=DOLT_USER,
                password=DOLT_PASSWORD,
                database=DATABASE,
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    waiter = _lock(dolt_server)
    assert not waiter.try_acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    killed = time.monotonic()
    assert waiter.try_acquire(wait_seconds=10), "the lock outlived its holder by 10 s"
    freed_after = time.monotonic() - killed
    waiter.release()
    print(f"\nDolt named lock free {freed_after:.2f} s after SIGKILL of its holder")
    assert freed_after < 5


def _pod_env(server: DoltServer, pod: Path, board: BeadBoardStub, **extra: str) -> dict[str, str]:
    (pod / "home").mkdir(parents=True, exist_ok=True)
    return (
        base_env(
            HOME=str(pod / "home"),
            BD_BIN=str(server.bd),
            BEADS_DB=str(pod / "beads"),
            BEADS_METADATA_FILE=str(server.metadata_file),
            BEADS_DOLT_PASSWORD=DOLT_PASSWORD,
            BEADBOARD_URL=board.url,
            AGENT_HEALTH_URL=f"{board.url}/health",
            HTTP_TIMEOUT_SECONDS="5",
        )
        | extra
    )


def _show(server: DoltServer, client: Path, bead: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(server.bd_run(client, "show", bead, "--json"))
    return rows[0]


def test_k_dispatchers_and_a_reaper_started_together_post_every_bead_exactly_once(
    dolt_server: DoltServer, tmp_path: Path
) -> None:
    client = dolt_server.client_dir(tmp_path / "client")
    created: list[str] = []
    lock_busy = 0
    with BeadBoardStub() as board:
        board.health.capacity = 10
        for round_number in range(ROUNDS):
            for index in range(BEADS_PER_ROUND):
                created.append(
                    dolt_server.bd_run(
                        client, "create", f"race {round_number}.{index}", "--assignee", "agent",
                        "--acceptance", "x", "--silent",
                    ).strip()
                )  # fmt: skip
            processes = [
                start_jobs(["dispatch"], _pod_env(dolt_server, tmp_path / f"d{k}", board))
                for k in range(DISPATCHERS)
            ]
            # The reaper's clock 11 minutes ahead: every claimed bead looks abandoned to it.
            processes.append(
                start_jobs(
                    at(datetime.now(UTC) + timedelta(minutes=11), "reap"),
                    _pod_env(dolt_server, tmp_path / "r", board),
                    module=JOBS_AT,
                )
            )
            for process in processes:
                out, _ = process.communicate(timeout=300)
                lock_busy += out.count('"event": "lock.busy"')
        # Whatever a round left open (every dispatcher met a held lock), one more run sends.
        settle = start_jobs(["dispatch"], _pod_env(dolt_server, tmp_path / "settle", board))
        settle.communicate(timeout=300)
        posts = {bead: 0 for bead in created}
        for request in board.requests_to(AGENT_DISPATCH):
            posts[request.json["taskId"]] += 1
    states = {bead: _show(dolt_server, client, bead)["status"] for bead in created}
    print(
        f"\nK={DISPATCHERS} dispatchers + 1 reaper, {ROUNDS} rounds, {len(created)} beads: "
        f"POSTs per bead {sorted(set(posts.values()))}, lock.busy seen {lock_busy} times"
    )
    assert all(count == 1 for count in posts.values()), posts
    assert set(states.values()) == {"in_progress"}, states
