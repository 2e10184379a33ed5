"""Session hooks (the interleaving matrix report) and the fixtures of tests/support/fixtures.py
(the in-process job harness, the BeadBoard stub)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from pods.process import ROOT

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
