"""bd 1.0.2's row limit, measured to the byte, and what the jobs do about it.

Every `bd update` stores the old row, as Go's json.Marshal writes it, in events.old_value
(TEXT). jobs/rowsize.py counts that size from the row `bd show` prints; here the count is
held to the binary: a row of 65,535 bytes updates, 65,536 is refused, with plain text and
with `<` (six bytes once escaped) alike.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta

import pytest

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub, Reply
from devtools.pods.process import run_jobs
from jobs.rowsize import ROW_LIMIT, WRITE_MARGIN, stored_size
from tests.integration.conftest import RealJobRunner, notes, real_env
from tests.support.routes import DISPATCH


def bead_of_size(bd: RealBd, size: int, filler: str = "x", **fields: str) -> str:
    """An agent bead whose stored row is exactly `size` bytes: its description padded with
    `filler` (then plain `x` to land on the byte), measured from `bd show`."""
    probe = bd.create("sized", assignee="agent", acceptance="ok", description="x")
    base = stored_size(bd.show(probe))
    bd.close(probe)  # out of the queue
    each = stored_size({"description": filler}) - stored_size({"description": ""})
    room = size - base + 1  # the probe's one `x`
    description = filler * (room // each) + "x" * (room % each)
    bead = bd.create("sized", assignee="agent", acceptance="ok", description=description)
    # Ids may differ in length by a character: measure again, pad the last few bytes.
    if short := size - stored_size(bd.show(bead)):
        bd.close(bead)
        description += "x" * short
        bead = bd.create("sized", assignee="agent", acceptance="ok", description=description)
    assert stored_size(bd.show(bead)) == size
    return bead


def update(bd: RealBd, bead: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bd.binary), "--db", str(bd.beads_dir), "update", bead, *args],
        env=bd.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("filler", ["x", "<"], ids=["plain", "html-escaped"])
def test_bd_updates_a_row_of_65535_bytes_and_refuses_65536(real_bd: RealBd, filler: str) -> None:
    fits = bead_of_size(real_bd, ROW_LIMIT, filler)
    over = bead_of_size(real_bd, ROW_LIMIT + 1, filler)
    assert update(real_bd, fits, "--priority", "3").returncode == 0
    refused = update(real_bd, over, "--priority", "3")
    assert refused.returncode == 1
    # bd quotes the whole row it could not store: show its two ends.
    error = (refused.stderr.strip() or refused.stdout.strip()).splitlines()[0]
    print(f"\nrow limit ({filler}): {ROW_LIMIT} bytes updated, {ROW_LIMIT + 1} refused:")
    print(f"{error[:110]} … {error[-90:]}")
    assert error.endswith("is too large for column 'old_value'")
    # What still works on it: a comment (a row of its own) and closing it.
    real_bd.run("comments", "add", over, "still here")
    real_bd.close(over)
    assert real_bd.show(over)["status"] == "closed"


def test_a_bead_the_claim_would_push_over_the_limit_is_never_claimed(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    """Before: claimed (the old row still fitted), then every later write on it failed."""
    near = bead_of_size(real_bd, ROW_LIMIT - 100)
    small = real_bd.create("small", assignee="agent", acceptance="ok", priority=3)
    before = real_bd.show(near)
    run = run_real("dispatch")
    assert run.code == 0, run.stdout + run.stderr
    assert [r.json["taskId"] for r in beadboard.requests_to(DISPATCH)] == [small]
    assert real_bd.show(near) == before
    warning = run.event("bead.too_large")
    assert (warning["bead"], warning["size"], warning["limit"]) == (near, ROW_LIMIT - 100, 65535)
    explained = run_jobs(["explain", near], real_env(real_bd, beadboard.url), timeout=120)
    assert explained.code == 0, explained.stderr
    assert f"{near}: too large for bd to update (65,435 bytes of 65,535)" in explained.stdout


def test_a_bead_stuck_past_the_limit_costs_the_reaper_a_warning_not_a_failed_run(
    real_bd: RealBd, run_real: RealJobRunner
) -> None:
    """The end state the limit leads to: in_progress, agent's, over the limit for good."""
    stuck = bead_of_size(real_bd, ROW_LIMIT - 200)
    real_bd.update(stuck, "--status", "in_progress", "--append-notes", "n" * 300)
    assert stored_size(real_bd.show(stuck)) > ROW_LIMIT
    updated = datetime.fromisoformat(real_bd.show(stuck)["updated_at"])
    for minutes in (45, 55):
        run = run_real("reap", now=updated + timedelta(minutes=minutes))
        assert run.code == 0, run.stdout + run.stderr
        warning = run.event("bead.too_large")
        assert (warning["bead"], warning["level"]) == (stuck, "warning")
        assert [e for e in run.events if e["event"] == "bead.failed"] == []
    # A human's reopen fails too; closing it is the way out.
    assert update(real_bd, stuck, "--status", "open").returncode == 1
    real_bd.close(stuck)
    assert real_bd.show(stuck)["status"] == "closed"
    assert notes(real_bd, stuck)[-1] == "n" * 300


def test_the_margin_leaves_room_for_what_the_jobs_write(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    """The largest bead the dispatcher claims still takes every write of a failed dispatch."""
    largest = bead_of_size(real_bd, ROW_LIMIT - WRITE_MARGIN)
    # A long reason, as a failing BeadBoard may give: it is quoted in the failure note.
    beadboard.set_handler(DISPATCH, lambda request: Reply(status=400, json={"error": "e" * 2000}))
    run = run_real("dispatch")
    assert run.code == 1  # the dispatch failed; bd took every write on the bead
    state = real_bd.show(largest)
    assert state["status"] == "open"
    assert notes(real_bd, largest)[-1].startswith("dispatch failed (attempt 1/3)")
    assert stored_size(state) < ROW_LIMIT
