"""What `tick.done`'s memory figures measure."""

from __future__ import annotations

import json
import subprocess
import sys

from devtools.paths import ROOT
from tests.support.harness import JobHarness

# Python holding 100 MiB starts `true` (about a megabyte of its own), then reports.
FORK_WHILE_BIG = """
import json, subprocess
from jobs.log import peak_memory
held = bytearray(100 * 2**20)
subprocess.run(["true"], check=True)
print(json.dumps(peak_memory()))
"""


def test_tick_done_reports_python_and_the_largest_child(harness: JobHarness) -> None:
    summary = harness.dispatch().summary
    figures = {key for key in summary if key.endswith("_rss_mib")}
    assert figures == {"python_peak_rss_mib", "child_peak_rss_mib"}


def test_the_child_figure_counts_from_pythons_size_at_the_fork() -> None:
    """Why it is not named after bd: a child's peak starts from the process it was forked from."""
    run = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_BIG], cwd=ROOT, capture_output=True, text=True, check=True
    )
    figures = json.loads(run.stdout)
    assert figures["child_peak_rss_mib"] >= 100
