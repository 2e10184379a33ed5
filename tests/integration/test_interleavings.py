"""The exactly-once promise under every interleaving we can inject at a bd call boundary.

For each bd call k of a dispatcher run that hands off three eligible beads, and for each
injection (a reaper with its clock 11 minutes ahead, a second dispatcher with its clock an
hour ahead, a transient bd failure of call k before or after it ran, a SIGKILL of the
dispatcher), run the injected dispatcher, then the jobs to quiescence, and check every bead:
POSTed at most once, and ending dispatched once, `open` with no record of a dispatch, or
`blocked` with a note saying why. The session's summary prints the matrix (also written to
build/interleavings.md).
"""

from __future__ import annotations

import pytest

from tests.integration.interleave import (
    INJECTIONS,
    Companion,
    Scenario,
    record_matrix_cell,
    settle,
    verdict,
)

# What each injection starts: (job, minutes its clock runs ahead).
COMPANIONS = {"reaper": [Companion("reap", 11)], "dispatcher": [Companion("dispatch", 60)]}
# The clean run's bd calls: the first read (bd query, then bd ready); under the lock no read,
# since the store's manifest says nothing was written since (jobs/detect.py); the three
# beads (three free slots) claimed in one call and marked `sending` in another; after the
# three POSTs, per bead the dispatched comment and the stage cleared. Checked below so the
# matrix cannot shrink. A write between the first read and the lock: tests/test_detect.py.
CALLS_PER_RUN = 2 + 2 + 2 * 3


def test_a_clean_run_hands_off_every_bead_once(scenario: Scenario) -> None:
    run, calls, _ = scenario.run_injected(None, "none")
    assert run.code == 0, run.stdout + run.stderr
    assert len(calls) == CALLS_PER_RUN, calls
    assert scenario.posts() == dict.fromkeys(scenario.beads, 1)
    assert not verdict(scenario)


@pytest.mark.parametrize("injection", INJECTIONS)
@pytest.mark.parametrize("boundary", range(1, CALLS_PER_RUN + 1))
def test_every_bead_ends_dispatched_once_requeued_or_blocked(
    scenario: Scenario, injection: str, boundary: int
) -> None:
    run, calls, fired = scenario.run_injected(
        boundary, injection, jobs=COMPANIONS.get(injection, [])
    )
    assert fired is not None, f"call {boundary} never happened: {calls}"
    settle(scenario)
    states = scenario.states()
    broken = verdict(scenario, states)
    posts = scenario.posts()
    ends = sorted(state["status"] for state in states.values())
    record_matrix_cell(
        boundary,
        injection,
        f"| {fired} | {injection} | {sorted(posts.values())} | {', '.join(ends)} | "
        f"{broken or 'holds'} |",
    )
    assert not broken, (broken, run.stdout, scenario.injected_output)
