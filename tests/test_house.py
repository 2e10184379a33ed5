"""The house stays in proportion: the tooling wing's files short, the repository root defined
once, and nothing deployed importing the wing."""

from __future__ import annotations

import re
import subprocess

from devtools.paths import ROOT

MAX_TOOLING_LINES = 400
POD_EXECUTOR = ("kube", "executor", "volumes", "env", "worker", "__main__", "__init__")
MAX_EXECUTOR_LINES = 600


def tracked(pattern: str) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def lines_of(path: str) -> int:
    return len((ROOT / path).read_text(encoding="utf-8").splitlines())


def test_no_tooling_file_is_over_400_lines() -> None:
    long = {path: lines_of(path) for path in tracked("devtools/*.py")}
    assert {p: n for p, n in long.items() if n > MAX_TOOLING_LINES} == {}


def test_the_pod_executor_is_at_most_600_lines_in_all() -> None:
    assert sum(lines_of(f"devtools/pods/{name}.py") for name in POD_EXECUTOR) <= MAX_EXECUTOR_LINES


def test_the_repository_root_is_defined_once() -> None:
    defines = re.compile(r"^ROOT\s*=", re.MULTILINE)
    where = [p for p in tracked("*.py") if defines.search((ROOT / p).read_text(encoding="utf-8"))]
    assert where == ["devtools/paths.py"]


def test_nothing_deployed_imports_the_tooling_wing() -> None:
    imports = re.compile(r"^\s*(from|import) devtools\b", re.MULTILINE)
    product = tracked("jobs/*.py") + tracked("components/*.py") + ["__main__.py"]
    assert [p for p in product if imports.search((ROOT / p).read_text(encoding="utf-8"))] == []
