"""Session hooks (the interleaving matrix report) and the fixtures of tests/support/fixtures.py
(the in-process job harness, the BeadBoard stub)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from devtools.paths import ROOT

pytest_plugins = ["tests.support.fixtures"]

# The suite starts thousands of bd processes, each living a fraction of a second: with Go's
# collector off (bounded by GOMEMLIMIT) they use a quarter less CPU, and the suite is
# CPU-bound on two cores. Passed on by devtools.localservices.bd.go_runtime_env; production and the
# benchmark run bd with Go's defaults.
os.environ.setdefault("GOGC", "off")
os.environ.setdefault("GOMEMLIMIT", "1GiB")


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
