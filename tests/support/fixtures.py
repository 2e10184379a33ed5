"""pytest fixtures: the in-process job harness and the BeadBoard stub.

Load with `pytest_plugins = ["tests.support.fixtures"]` (root conftest or a test module).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localservices.beadboard import BeadBoardStub
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
