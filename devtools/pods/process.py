"""`python3 -m jobs` as a local process, as the CronJob runs it: a fresh process, explicit env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from devtools.localservices.bd import go_runtime_env
from devtools.paths import ROOT


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


def run_jobs(
    args: list[str],
    env: dict[str, str],
    timeout: float = 60,
    module: str = "jobs",
    *,
    forked_by_shell: bool = False,
) -> JobRun:
    """Run `python3 -m jobs ...` as the CronJob does: a fresh process with an explicit env.

    `module` runs another entry point in the same way (a test's clock-shifting launcher).
    `forked_by_shell`: started by a small shell, as a container runtime would, for memory
    figures: Linux counts a process's peak RSS from the process it was forked from, so
    forked straight from a large test or bench process its own figure would be that one's.
    """
    command = [sys.executable, "-m", module, *args]
    if forked_by_shell:
        command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command]
    completed = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return JobRun(completed.returncode, completed.stdout, completed.stderr)


def start_jobs(args: list[str], env: dict[str, str], module: str = "jobs") -> subprocess.Popen[str]:
    """The same, left running: for signals, races and watch windows."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
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
        **go_runtime_env(),
        **extra,
    }
