"""Drive the real bd binary (built by `make tools`) to set up and read back test databases."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.paths import ROOT

BD_REAL_ENV = "BD_REAL"


class ToolBuildError(RuntimeError):
    pass


# The Go runtime's own knobs, passed on to the bd (and dolt) processes started here when the
# caller set them: the test suite turns the collector off for its thousands of short-lived
# bd processes (tests/conftest.py), which saves a quarter of their CPU; nothing else does.
GO_RUNTIME_KNOBS = ("GOGC", "GOMEMLIMIT")


def go_runtime_env() -> dict[str, str]:
    return {name: os.environ[name] for name in GO_RUNTIME_KNOBS if name in os.environ}


def build_tool(name: str) -> Path:
    """bd or dolt from tools/build-go-tool.sh: built once into the tools cache, then reused."""
    script = ROOT / "tools" / "build-go-tool.sh"
    built = subprocess.run(
        [str(script), name], capture_output=True, text=True, check=False, timeout=1800
    )
    if built.returncode != 0:
        raise ToolBuildError(f"cannot build {name}: {built.stderr.strip()}")
    return Path(built.stdout.strip())


def real_bd_path() -> Path | None:
    value = os.environ.get(BD_REAL_ENV, "").strip()
    return Path(value) if value else None


@dataclass
class RealBd:
    """A fresh embedded-mode beads database in `workdir/.beads`, driven by the real binary."""

    binary: Path
    workdir: Path
    actor: str = "tester"

    @property
    def beads_dir(self) -> Path:
        return self.workdir / ".beads"

    def env(self) -> dict[str, str]:
        # HOME inside the test dir: bd writes state there, never in the developer's home.
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "BEADS_ACTOR": self.actor,
            **go_runtime_env(),
        }

    def run(
        self, *args: str, check: bool = True, actor: str | None = None, timeout: float = 120
    ) -> str:
        command = [
            str(self.binary),
            "--db",
            str(self.beads_dir),
            "--actor",
            actor or self.actor,
            *args,
        ]
        completed = subprocess.run(
            command,
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and completed.returncode != 0:
            raise AssertionError(
                f"bd {' '.join(args)} exited {completed.returncode}: "
                f"{completed.stderr.strip() or completed.stdout.strip()}"
            )
        return completed.stdout

    def init(self, prefix: str = "tb") -> RealBd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(self.binary),
                "init",
                "--prefix",
                prefix,
                "--quiet",
                "--non-interactive",
                "--skip-agents",
                "--skip-hooks",
            ],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return self

    def create(
        self,
        title: str,
        *,
        priority: int = 2,
        assignee: str | None = None,
        acceptance: str | None = None,
        description: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> str:
        """`extra`: more `bd create` flags (`--defer +2h`, `--type epic`, `--parent ID`)."""
        args = ["create", title, "--priority", str(priority), "--silent", *extra]
        if assignee:
            args += ["--assignee", assignee]
        if acceptance:
            args += ["--acceptance", acceptance]
        if description:
            args += ["--description", description]
        return self.run(*args).strip()

    def depend(self, bead_id: str, on: str, kind: str = "blocks") -> None:
        """`bd dep add`: `bead_id` now depends on `on`."""
        self.run("dep", "add", bead_id, on, "--type", kind)

    def close(self, bead_id: str) -> None:
        self.run("close", bead_id)

    def create_many(self, rows: list[dict[str, Any]]) -> list[str]:
        """Create beads in one `bd import` (bd gives them ids and stamps, as `create` does);
        their ids, in the order given. Titles must be new and distinct: they find the ids."""
        titles = [str(row["title"]) for row in rows]
        assert len(set(titles)) == len(titles), "create_many needs distinct titles"
        self._import([{"status": "open", "issue_type": "task"} | row for row in rows])
        listed = json.loads(self.run("list", "--all", "--limit", "0", "--json"))
        ids = {str(row["title"]): str(row["id"]) for row in listed}
        return [ids[title] for title in titles]

    def update(self, bead_id: str, *args: str) -> None:
        self.run("update", bead_id, *args)

    def show(self, bead_id: str) -> dict[str, Any]:
        rows = json.loads(self.run("show", bead_id, "--json"))
        assert isinstance(rows, list) and len(rows) == 1
        row: dict[str, Any] = rows[0]
        return row

    def show_many(self, bead_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Several beads, comments included, in one bd process (each costs ~0.4 s embedded)."""
        rows = json.loads(self.run("show", *bead_ids, "--json"))
        return {row["id"]: row for row in rows}

    def backdate(self, bead_id: str, minutes: float) -> None:
        """Make a bead look untouched for `minutes`: `bd import` upserts a row with its stamps.

        Lets a demo or a test show the reaper at work without waiting or faking its clock.
        """
        row = self.show(bead_id)
        then = datetime.now(UTC) - timedelta(minutes=minutes)
        row["updated_at"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
        self._import([row])

    def _import(self, rows: list[dict[str, Any]]) -> None:
        """`bd import` of `rows`: new ones are created, existing ones (by id) upserted."""
        source = self.workdir / "import.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        self.run("import", str(source))
        source.unlink()

    def query(self, expression: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(
            self.run("query", expression, "--limit", "0", "--all", "--json")
        )
        return rows
