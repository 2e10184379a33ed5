"""pytest fixtures: the in-process job harness, the BeadBoard stub, and the bd fake.

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
from tests.support.harness import FakeClock, JobHarness
from tests.support.memory_store import MemoryStore


@pytest.fixture(scope="session")
def beadboard_server() -> Iterator[BeadBoardStub]:
    with BeadBoardStub() as stub:
        yield stub


@pytest.fixture
def beadboard(beadboard_server: BeadBoardStub) -> BeadBoardStub:
    """The stub, fresh for each test: one server per worker (stopping one takes 50 ms)."""
    beadboard_server.reset()
    return beadboard_server


@pytest.fixture
def harness(beadboard: BeadBoardStub, tmp_path: Path) -> JobHarness:
    """A fresh memory store and fake clock; a lock file and BeadBoard stub of the test's own."""
    clock = FakeClock()
    beads_dir = tmp_path / "beads"
    beads_dir.mkdir()
    return JobHarness(MemoryStore(clock), clock, beadboard, beads_dir)


@pytest.fixture
def store(harness: JobHarness) -> MemoryStore:
    return harness.store


@pytest.fixture
def clock(harness: JobHarness) -> FakeClock:
    return harness.clock


@dataclass(frozen=True)
class FakeBdEnv:
    """A fresh, initialised fake bd database plus everything needed to run it.

    Still run as a process by the pod-view tests and the fake's own tests (test_support.py);
    the jobs' unit tests use the memory store, the integration tests the real bd.

    api: direct state access (seed beads, backdate stamps, read results).
    bin: an executable `bd` shim (runs the fake with this interpreter).
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
