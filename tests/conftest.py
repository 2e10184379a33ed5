"""Shared fixtures: the fake bd, the BeadBoard stub, and a runner for `python3 -m jobs`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.support.beadboard_stub import BeadBoardStub
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


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class JobRun:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def event(self, name: str) -> dict[str, Any]:
        matches = [e for e in self.events if e["event"] == name]
        assert matches, f"no {name!r} event in {self.stdout}"
        return matches[-1]

    @property
    def summary(self) -> dict[str, Any]:
        return self.event("tick.done")


def run_jobs(args: list[str], env: dict[str, str], timeout: float = 60) -> JobRun:
    """Run `python3 -m jobs ...` as the CronJob does: a fresh process with an explicit env."""
    completed = subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return JobRun(completed.returncode, completed.stdout, completed.stderr)


def start_jobs(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The same, left running: for signals, races and watch windows."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def base_env(**extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


JobRunner = Callable[..., JobRun]


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
