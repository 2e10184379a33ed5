"""pytest fixtures for the bd fake and the BeadBoard stub.

Load with `pytest_plugins = ["tests.support.fixtures"]` (root conftest or a test module).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localservices.beadboard import BeadBoardStub
from tests.support.fake_bd import FakeBd


@dataclass(frozen=True)
class FakeBdEnv:
    """A fresh, initialised fake bd database plus everything needed to run it.

    api: direct state access (seed beads, backdate stamps, read results).
    bin: an executable `bd` shim (runs the fake with this interpreter); pass it wherever
        a bd binary path is expected, or put `bin_dir` on PATH.
    db_dir: the directory to give bd as `--db`.
    call_log: a file to point FAKE_BD_CALL_LOG at; `calls()` reads it back.
    """

    api: FakeBd
    bin: Path
    bin_dir: Path
    db_dir: Path
    call_log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment additions for a process running the fake (call log on, actor set)."""
        return {"FAKE_BD_CALL_LOG": str(self.call_log), **extra}

    def calls(self) -> list[dict[str, object]]:
        """One dict per logged invocation: argv, subcommand, pid, time, cwd."""
        if not self.call_log.exists():
            return []
        lines = self.call_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def fake_bd(tmp_path: Path) -> FakeBdEnv:
    db_dir = tmp_path / "beads"
    api = FakeBd(db_dir)
    api.init()
    bin_dir = tmp_path / "bin"
    shim = FakeBd.write_wrapper(bin_dir)
    return FakeBdEnv(
        api=api,
        bin=shim,
        bin_dir=bin_dir,
        db_dir=db_dir,
        call_log=tmp_path / "bd-calls.jsonl",
    )


@pytest.fixture
def beadboard() -> Iterator[BeadBoardStub]:
    with BeadBoardStub() as stub:
        yield stub
