"""Fixtures for tests against the real bd 1.0.2: built (or found in the cache) on first use."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from devtools.localservices.bd import RealBd, ToolBuildError, build_tool, real_bd_path
from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DoltServer
from devtools.localservices.dolt import dolt_server as start_dolt_server
from devtools.pods.process import JobRun, base_env, run_jobs
from tests.integration.interleave import Scenario, Template, make_template
from tests.support.jobs_at import MODULE as JOBS_AT
from tests.support.jobs_at import at


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bd_binary() -> Path:
    """The real bd: from BD_REAL (make test), else built/reused via tools/build-go-tool.sh.

    Never skipped: without the real binary these tests have nothing to say, so they fail.
    """
    given = real_bd_path()
    if given is not None:
        return given
    try:
        return build_tool("bd")
    except ToolBuildError as exc:
        pytest.fail(str(exc))


PROMTOOL_ENV = "PROMTOOL"


@pytest.fixture(scope="session")
def promtool() -> Path:
    """promtool: from PROMTOOL (make test), else built/reused via tools/build-go-tool.sh.

    Never skipped, as bd is not: without it the alert rules would go untested unnoticed.
    """
    given = os.environ.get(PROMTOOL_ENV, "").strip()
    if given:
        return Path(given)
    try:
        return build_tool("promtool")
    except ToolBuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def real_bd(bd_binary: Path, tmp_path: Path) -> RealBd:
    return RealBd(bd_binary, tmp_path / "project").init()


RealJobRunner = Callable[..., JobRun]


def real_env(bd: RealBd, board_url: str, **extra: str) -> dict[str, str]:
    env = base_env(
        **bd.env(),
        BD_BIN=str(bd.binary),
        BEADS_DB=str(bd.beads_dir),
        BEADBOARD_URL=board_url,
        HTTP_TIMEOUT_SECONDS="2",
    )
    return env | extra


def notes(bd: RealBd, bead_id: str) -> list[str]:
    return str(bd.show(bead_id).get("notes", "")).splitlines()


def comments(bd: RealBd, bead_id: str) -> list[str]:
    """The bead's comments' texts, oldest first (where the dispatch records go)."""
    return [str(c["text"]) for c in bd.show(bead_id).get("comments") or []]


@pytest.fixture
def run_real(real_bd: RealBd, beadboard: BeadBoardStub) -> RealJobRunner:
    def run(*args: str, now: datetime | None = None, **overrides: str) -> JobRun:
        env = real_env(real_bd, beadboard.url)
        env.update(overrides)
        timeout = float(os.environ.get("JOB_TIMEOUT", "120"))
        if now is None:
            return run_jobs(list(args), env, timeout=timeout)
        return run_jobs(at(now, *args), env, timeout=timeout, module=JOBS_AT)

    return run


@pytest.fixture(scope="module")
def dolt_server(bd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoltServer]:
    """A `dolt sql-server` with bd's schema, one per test module."""
    try:
        with start_dolt_server(bd_binary, tmp_path_factory.mktemp("dolt")) as server:
            yield server
    except ToolBuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def template(bd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Three eligible agent beads (and the old lock bead), made once per module."""
    return make_template(bd_binary, tmp_path_factory.mktemp("template") / "template")


@pytest.fixture
def scenario(template: Template, tmp_path: Path) -> Iterator[Scenario]:
    """A copy of the template and a stand-in BeadBoard with three agent slots."""
    with BeadBoardStub() as board:
        board.health.capacity = 3
        yield Scenario(template.copy(tmp_path), board, tmp_path, list(template.beads))
