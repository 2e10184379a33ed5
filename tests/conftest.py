"""Shared fixtures and helpers: the fake bd, the BeadBoard stub, a runner for `python3 -m jobs`."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jobs.lock import LOCK_FILE_NAME, FileLock
from pods.process import ROOT, JobRun, base_env, run_jobs

if TYPE_CHECKING:
    from localservices.beadboard import BeadBoardStub
    from tests.support.fake_bd import FakeBd
    from tests.support.fixtures import FakeBdEnv

pytest_plugins = ["tests.support.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # The controller only (xdist workers carry `workerinput` and inherit the variable).
    if not hasattr(config, "workerinput"):
        from tests.integration.interleave import MATRIX_DIR_ENV  # noqa: PLC0415 (real-bd harness)

        os.environ[MATRIX_DIR_ENV] = str(ROOT / "build" / f"interleavings-{os.getpid()}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    from tests.integration.interleave import matrix_dir, matrix_table  # noqa: PLC0415

    table = matrix_table()
    if table is not None:
        (ROOT / "build" / "interleavings.md").write_text(table, encoding="utf-8")
        terminalreporter.write_sep("-", "interleaving matrix (build/interleavings.md)")
        terminalreporter.write_line(table)
    shutil.rmtree(matrix_dir(), ignore_errors=True)


JobRunner = Callable[..., JobRun]


# Helpers shared by the tests against the fake bd.


def agent_bead(api: FakeBd, title: str = "task", **fields: object) -> str:
    values: dict[str, object] = {"assignee": "agent", "acceptance": "it works", "priority": 2}
    values.update(fields)
    return api.create(title, **values)  # type: ignore[arg-type]


def notes_of(api: FakeBd, bead_id: str) -> list[str]:
    return str(api.get(bead_id).get("notes", "")).splitlines()


def comments_of(api: FakeBd, bead_id: str) -> list[str]:
    return [str(comment["text"]) for comment in api.comments(bead_id)]


def bd_argvs(fake_bd: FakeBdEnv, subcommand: str) -> list[list[str]]:
    """The argument lists of every logged bd call of one subcommand, in order."""
    return [
        [str(arg) for arg in call["argv"]]  # type: ignore[attr-defined]
        for call in fake_bd.calls()
        if call["subcommand"] == subcommand
    ]


@contextlib.contextmanager
def lock_held_elsewhere(db_dir: Path) -> Iterator[FileLock]:
    """The dispatch lock taken by this test process, as another dispatcher would hold it."""
    lock = FileLock(db_dir / LOCK_FILE_NAME)
    assert lock.try_acquire(), "the dispatch lock was not free"
    try:
        yield lock
    finally:
        lock.release()


def lock_is_free(db_dir: Path) -> bool:
    lock = FileLock(db_dir / LOCK_FILE_NAME)
    if not lock.try_acquire():
        return False
    lock.release()
    return True


# Takes the dispatch lock (argv[1]) in a process of its own, says so, holds it argv[2] s.
HOLD_AND_WAIT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 120)
"""


@pytest.fixture
def jobs_env(fake_bd: FakeBdEnv, beadboard: BeadBoardStub, tmp_path: Path) -> dict[str, str]:
    """Env for the jobs against the fake bd and the stub; tests add or override keys."""
    home = tmp_path / "home"
    home.mkdir()
    return base_env(
        HOME=str(home),
        BD_BIN=str(fake_bd.bin),
        BEADS_DB=str(fake_bd.db_dir),
        BEADBOARD_URL=beadboard.url,
        HTTP_TIMEOUT_SECONDS="2",
        BD_TIMEOUT_SECONDS="20",
        **fake_bd.env(),
    )


@pytest.fixture
def run_job(jobs_env: dict[str, str]) -> JobRunner:
    def run(*args: str, **overrides: str) -> JobRun:
        env = {**jobs_env, **overrides}
        return run_jobs(list(args), {k: v for k, v in env.items() if v is not None})

    return run
