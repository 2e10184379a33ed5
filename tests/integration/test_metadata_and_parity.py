"""The rendered metadata.json is a valid bd server-mode config; the unit tests' memory store
ends where the real bd does."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.names import BD_CONFIG_NAME
from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub, Reply
from devtools.manifests.mocks import render_program
from jobs.beadboard import BeadBoard
from jobs.beads import BdClient, BeadStore
from jobs.dispatch import Dispatcher
from jobs.lock import LOCK_FILE_NAME, FileLock
from jobs.log import Clock, EventLog, utc_now
from jobs.reap import Reaper
from jobs.run import RunContext
from jobs.settings import JobSettings
from tests.support.harness import FakeClock
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH


def unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_rendered_metadata_is_accepted_as_server_mode_config(
    bd_binary: Path, tmp_path: Path
) -> None:
    port = unused_loopback_port()
    rendered = render_program({"doltHost": "127.0.0.1", "doltPort": str(port)})
    metadata = json.loads(rendered.configmap(BD_CONFIG_NAME)["data"]["metadata.json"])
    production = json.loads(render_program().configmap(BD_CONFIG_NAME)["data"]["metadata.json"])
    # Only the address differs from what production gets.
    assert {k: v for k, v in metadata.items() if not k.startswith("dolt_server_")} == {
        k: v for k, v in production.items() if not k.startswith("dolt_server_")
    }
    beads_dir = tmp_path / "beads"
    beads_dir.mkdir()
    (beads_dir / "metadata.json").write_text(json.dumps(metadata))
    home = tmp_path / "home"
    home.mkdir()
    completed = subprocess.run(
        [
            str(bd_binary),
            "--db",
            str(beads_dir),
            "--json",
            "query",
            "assignee=agent",
            "--limit",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    # A connection error naming our address, not a complaint about the config itself.
    assert f"Dolt server unreachable at 127.0.0.1:{port}" in output, output
    assert not re.search(r"(?i)(invalid|parse|unknown|unmarshal).*metadata", output), output


def _normalise(bead: dict[str, Any]) -> dict[str, Any]:
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    return {
        "title": bead["title"],
        "status": bead["status"],
        "assignee": bead.get("assignee", ""),
        "priority": bead["priority"],
        "metadata": bead.get("metadata") or {},
        "notes": [stamp.sub("<ts>", line) for line in str(bead.get("notes", "")).splitlines()],
        "comments": [stamp.sub("<ts>", str(c.get("text"))) for c in bead.get("comments") or []],
    }


SEED = (  # title, priority, assignee, acceptance criteria
    ("dispatch me", 1, "agent", "works"),
    ("fail me", 2, "agent", "works"),
    ("no criteria", 0, "agent", ""),
    ("human", 0, "alice", "works"),
)


def _run_jobs(store: BeadStore, clock: Clock, beads_dir: Path, board_url: str) -> list[int]:
    """Dispatch twice (one slot: one bead a run), then reap 31 minutes later, in-process."""
    settings = JobSettings(beadboard_url=board_url, beads_db=beads_dir)
    lock = FileLock(beads_dir / LOCK_FILE_NAME)
    codes = []
    for _ in range(2):
        context = RunContext(
            settings, store, lock, clock, EventLog("dispatch", "t", clock, io.StringIO())
        )
        with BeadBoard(board_url, settings.http_timeout_seconds) as board:
            codes.append(Dispatcher(context, board).run())
    later = shifted(clock, timedelta(minutes=31))
    context = RunContext(settings, store, lock, later, EventLog("reap", "t", later, io.StringIO()))
    codes.append(Reaper(context).run())
    return codes


def shifted(clock: Clock, by: timedelta) -> Clock:
    return lambda: clock() + by


def test_the_memory_store_and_the_real_bd_end_in_the_same_states(
    bd_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit tests' in-memory store against the real bd 1.0.2, driven by the same jobs."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # real bd writes state under HOME
    (tmp_path / "home").mkdir()
    results = {}
    for name in ("real", "memory"):
        with BeadBoardStub() as board:
            board.program(
                DISPATCH,
                Reply(json={"job_id": "job-ok"}),
                Reply(status=502, json={"error": "down"}),
            )
            if name == "real":
                real = RealBd(bd_binary, tmp_path / "real").init()
                ids = {t: real.create(t, priority=p, assignee=a, acceptance=c or None)
                       for t, p, a, c in SEED}  # fmt: skip
                store: BeadStore = BdClient(
                    str(bd_binary), real.beads_dir, actor="agent", timeout_seconds=60
                )
                codes = _run_jobs(store, utc_now, real.beads_dir, board.url)
                beads = {t: _normalise(real.show(i)) for t, i in ids.items()}
            else:
                clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
                memory = MemoryStore(clock)
                ids = {t: memory.add(t, priority=p, assignee=a, acceptance=c)
                       for t, p, a, c in SEED}  # fmt: skip
                beads_dir = tmp_path / "memory"
                beads_dir.mkdir()
                codes = _run_jobs(memory, clock, beads_dir, board.url)
                beads = {t: _normalise(memory.rows[i]) for t, i in ids.items()}
            posts = [r.json for r in board.requests_to(DISPATCH)]
        results[name] = {"codes": codes, "beads": beads, "posts": len(posts)}
    assert results["real"]["codes"] == [0, 1, 0]
    assert results["real"]["posts"] == 2
    assert results["memory"] == results["real"]
