"""The rendered metadata.json is a valid bd server-mode config; the fake bd matches the real one."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from components.names import BD_CONFIG_NAME
from localservices.bd import RealBd
from localservices.beadboard import BeadBoardStub, Reply
from manifests.mocks import render_program
from pods.process import base_env, run_jobs
from tests.support.fake_bd import FakeBd


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
        "metadata": bead.get("metadata", {}),
        "notes": [stamp.sub("<ts>", line) for line in str(bead.get("notes", "")).splitlines()],
        "comments": [
            (c.get("author"), stamp.sub("<ts>", str(c.get("text"))))
            for c in bead.get("comments") or []
        ],
        "has_started_at": "started_at" in bead,
        "has_closed_at": "closed_at" in bead,
    }


def _scenario(bd_bin: str, beads_dir: Path, home: Path, create: Any, show: Any) -> dict[str, Any]:
    """Same steps for either bd: seed, dispatch ok, dispatch fail, reap 31 minutes later."""
    ok = create("dispatch me", 1, "agent", "works")
    failing = create("fail me", 2, "agent", "works")
    create("no criteria", 0, "agent", None)
    create("human", 0, "alice", "works")
    with BeadBoardStub() as board:
        board.program(
            "/api/agent-dispatch",
            Reply(json={"job_id": "job-ok"}),
            Reply(status=502, json={"error": "down"}),
        )
        env = base_env(
            HOME=str(home),
            BD_BIN=bd_bin,
            BEADS_DB=str(beads_dir),
            BEADBOARD_URL=board.url,
            BEADS_ACTOR="tester",
        )
        codes = [run_jobs(["dispatch"], env).code for _ in range(2)]
        later = (datetime.now().astimezone() + timedelta(minutes=31)).isoformat()
        codes.append(run_jobs(["reap"], {**env, "AUTODISPATCH_NOW": later}).code)
    beads = {
        title: _normalise(show(title))
        for title in ("dispatch me", "fail me", "no criteria", "human")
    }
    return {"exit_codes": codes, "beads": beads, "ids": (ok, failing)}


def test_fake_and_real_bd_end_in_the_same_states(bd_binary: Path, tmp_path: Path) -> None:
    real = RealBd(bd_binary, tmp_path / "real").init()
    by_title_real: dict[str, str] = {}

    def real_create(title: str, priority: int, assignee: str, acceptance: str | None) -> str:
        by_title_real[title] = real.create(
            title, priority=priority, assignee=assignee, acceptance=acceptance
        )
        return by_title_real[title]

    def real_show(title: str) -> dict[str, Any]:
        return real.show(by_title_real.get(title, title))

    real_result = _scenario(
        str(bd_binary), real.beads_dir, tmp_path / "real" / "home", real_create, real_show
    )

    fake_dir = tmp_path / "fake-beads"
    fake = FakeBd(fake_dir)
    fake.init(prefix="tb")
    shim = FakeBd.write_wrapper(tmp_path / "fake-bin")
    by_title_fake: dict[str, str] = {}

    def fake_create(title: str, priority: int, assignee: str, acceptance: str | None) -> str:
        by_title_fake[title] = fake.create(
            title, priority=priority, assignee=assignee, acceptance=acceptance
        )
        return by_title_fake[title]

    def fake_show(title: str) -> dict[str, Any]:
        return fake.get(by_title_fake.get(title, title))

    home = tmp_path / "fake-home"
    home.mkdir()
    fake_result = _scenario(str(shim), fake_dir, home, fake_create, fake_show)

    assert real_result["exit_codes"] == fake_result["exit_codes"] == [0, 1, 0]
    assert fake_result["beads"] == real_result["beads"]
