"""The reaper tick through its CLI against the fake bd: the threshold, its boundary, its reach,
and the dispatch lock it must hold for every change."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from jobs.beads import BdClient
from jobs.lock import LOCK_FILE_NAME, FileLock
from jobs.log import EventLog
from jobs.protocol import STAGE_KEY
from jobs.reap import Reaper
from jobs.settings import load_settings
from tests.conftest import HOLD_AND_WAIT, JobRunner, lock_held_elsewhere, lock_is_free
from tests.support.fake_bd import FakeBd
from tests.support.fixtures import FakeBdEnv

NOW = datetime.now(UTC).replace(microsecond=0)


def stuck(api: FakeBd, minutes: float, assignee: str = "agent", status: str = "in_progress") -> str:
    return api.create(
        f"idle {minutes}m",
        assignee=assignee,
        status=status,
        acceptance="x",
        updated_at=NOW - timedelta(minutes=minutes),
    )


def test_blocks_stale_agent_beads_and_spares_fresh_ones(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    stale = stuck(api, 31)
    fresh = stuck(api, 29)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stderr
    assert result.summary["blocked"] == [stale]
    assert api.get(stale)["status"] == "blocked"
    note = api.get(stale)["notes"].splitlines()[-1]
    assert note.startswith("reaper: no progress for 31m (threshold 30m) — blocking (reaper, 20")
    assert api.get(fresh)["status"] == "in_progress"
    assert "notes" not in api.get(fresh)


def test_boundary_is_timezone_aware(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    api = fake_bd.api
    at_29 = stuck(api, 29)
    at_31 = stuck(api, 31)
    # The same instant written with a +05:30 offset: a naive comparison would be 5.5 h off.
    local = NOW.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    result = run_job("reap", AUTODISPATCH_NOW=local)
    assert result.summary["blocked"] == [at_31]
    assert api.get(at_29)["status"] == "in_progress"


def test_threshold_is_configurable(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    bead = stuck(fake_bd.api, 11)
    result = run_job("reap", REAPER_THRESHOLD_MINUTES="10", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.summary["blocked"] == [bead]
    assert "(threshold 10m)" in fake_bd.api.get(bead)["notes"]


def test_other_assignees_and_other_states_are_never_touched(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    untouched = [
        stuck(api, 120, assignee="alice"),
        stuck(api, 120, status="open"),
        stuck(api, 120, status="blocked"),
        stuck(api, 120, assignee=""),
    ]
    before = {bead: api.get(bead) for bead in untouched}
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0
    assert result.summary["blocked"] == []
    assert {bead: api.get(bead) for bead in untouched} == before


def test_no_result_cap_sixty_stale_beads_all_blocked(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    beads = [stuck(fake_bd.api, 40) for _ in range(60)]
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0
    assert sorted(result.summary["blocked"]) == sorted(beads)


def test_dry_run_changes_nothing(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    bead = stuck(fake_bd.api, 45)
    before = fake_bd.api.all()
    result = run_job("reap", "--dry-run", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0
    assert result.event("dry_run.would_block")["bead"] == bead
    assert fake_bd.api.all() == before


def test_reaper_needs_no_beadboard(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    bead = stuck(fake_bd.api, 45)
    result = run_job("reap", BEADBOARD_URL="", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stderr
    assert fake_bd.api.get(bead)["status"] == "blocked"


def test_bd_failure_exits_1(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    bead = stuck(fake_bd.api, 45)
    before = fake_bd.api.all()
    result = run_job("reap", FAKE_BD_FAIL="update", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 1
    failed = result.event("reap.failed")
    assert (failed["level"], failed["bead"]) == ("error", bead)
    assert "bd update exited 1" in failed["error"]
    assert result.summary["errors"] == 1
    assert result.summary["skipped"] == [bead]
    assert fake_bd.api.all() == before


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_bad_threshold_is_a_config_error(
    fake_bd: FakeBdEnv, run_job: JobRunner, value: str
) -> None:
    result = run_job("reap", REAPER_THRESHOLD_MINUTES=value)
    assert result.code == 2
    assert result.stderr.startswith("configuration error: REAPER_THRESHOLD_MINUTES")


def staged(api: FakeBd, stage: str, minutes: float) -> str:
    bead = stuck(api, minutes)
    api.set_fields(
        bead, metadata={"auto_dispatch_stage": stage}, updated_at=NOW - timedelta(minutes=minutes)
    )
    return bead


def test_claimed_but_never_sent_goes_back_to_the_queue_at_once(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    old = staged(api, "claimed", 11)
    # Seconds old: holding the lock proves its dispatcher is gone, so no grace period.
    young = staged(api, "claimed", 0.1)
    sent = staged(api, "sending", 2)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert sorted(result.summary["requeued"]) == sorted([old, young])
    for bead in (old, young):
        state = api.get(bead)
        assert state["status"] == "open"
        assert STAGE_KEY not in state.get("metadata", {})
        assert "never sent to BeadBoard" in state["notes"].splitlines()[-1]
    # Maybe sent: never requeued (it could run twice), blocked only once it goes quiet.
    assert api.get(sent)["status"] == "in_progress"
    assert api.get(sent)["metadata"][STAGE_KEY] == "sending"
    assert lock_is_free(fake_bd.db_dir)


def test_sent_with_unknown_outcome_is_blocked_not_resent(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    maybe_sent = staged(api, "sending", 31)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.summary["blocked"] == [maybe_sent]
    state = api.get(maybe_sent)
    assert state["status"] == "blocked"
    assert "BeadBoard may or may not have started a job" in state["notes"]


def test_a_recent_comment_is_progress(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    api = fake_bd.api
    talking = stuck(api, 45)
    api.comment(talking, "still on it", author="agent", created_at=NOW - timedelta(minutes=5))
    quiet = stuck(api, 45)
    api.comment(quiet, "started", author="agent", created_at=NOW - timedelta(minutes=40))
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert result.summary["blocked"] == [quiet]
    assert api.get(talking)["status"] == "in_progress"
    assert "notes" not in api.get(talking)
    assert result.event("reap.skipped")["bead"] == talking
    # Idle time counts from the latest sign of life, the comment included.
    assert "no progress for 40m" in api.get(quiet)["notes"]


def test_dry_run_agrees_with_a_real_run_about_a_recent_comment(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    talking = stuck(api, 45)
    api.comment(talking, "still on it", author="agent", created_at=NOW - timedelta(minutes=2))
    real = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert real.summary["blocked"] == []
    dry = run_job("reap", "--dry-run", AUTODISPATCH_NOW=NOW.isoformat())
    assert [e for e in dry.events if e["event"].startswith("dry_run.")] == []


def test_a_bead_bd_cannot_show_is_skipped_and_the_rest_are_reaped(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    odd = stuck(api, 45)
    # `bd show` prints a comment this client cannot read (text must be a string).
    comment = {"id": "c-1", "issue_id": odd, "author": "x", "text": 5, "created_at": "2026-01-01"}
    api.set_fields(odd, comments=[comment], updated_at=NOW - timedelta(minutes=45))
    fine = stuck(api, 45)
    before = api.get(odd)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert result.summary["blocked"] == [fine]
    skipped = result.event("bead.skipped")
    assert (skipped["bead"], skipped["level"]) == (odd, "warning")
    assert "comments.0.text" in skipped["reason"]
    assert api.get(odd) == before


def test_a_bead_with_unreadable_metadata_is_skipped_once(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    odd = stuck(api, 45)
    api.set_fields(odd, metadata=["x"], updated_at=NOW - timedelta(minutes=45))
    fine = stuck(api, 45)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert result.summary["blocked"] == [fine]
    assert [e["bead"] for e in result.events if e["event"] == "bead.skipped"] == [odd]
    assert api.get(odd)["status"] == "in_progress"


def test_the_assignee_is_quoted_in_the_query(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    mine = stuck(fake_bd.api, 45, assignee="bot@corp.example")
    other = stuck(fake_bd.api, 45)
    result = run_job("reap", AGENT_ASSIGNEE="bot@corp.example", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert result.summary["blocked"] == [mine]
    assert fake_bd.api.get(other)["status"] == "in_progress"


def test_nothing_due_never_touches_the_lock(fake_bd: FakeBdEnv, run_job: JobRunner) -> None:
    stuck(fake_bd.api, 5)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0
    assert result.summary["stale"] == 0
    assert not (fake_bd.db_dir / LOCK_FILE_NAME).exists()


# -- in process: the reaper's wait for the lock, shortened -------------------------------------


def reaper(fake_bd: FakeBdEnv, wait: float) -> tuple[Reaper, io.StringIO]:
    env = {"BD_BIN": str(fake_bd.bin), "BEADS_DB": str(fake_bd.db_dir)}
    settings = load_settings(env)
    bd = BdClient(
        str(fake_bd.bin), fake_bd.db_dir, actor="agent", timeout_seconds=20, env=fake_bd.env()
    )
    lock = FileLock(fake_bd.db_dir / LOCK_FILE_NAME)
    stream = io.StringIO()
    log = EventLog("reap", "test-run", lambda: NOW, stream)
    return Reaper(settings, bd, lock, lambda: NOW, log, lock_wait_seconds=wait), stream


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_while_a_dispatcher_holds_the_lock_the_reaper_changes_nothing(
    fake_bd: FakeBdEnv,
) -> None:
    api = fake_bd.api
    claimed = staged(api, "claimed", 0.1)
    idle = stuck(api, 45)
    before = api.all()
    job, stream = reaper(fake_bd, wait=0.5)
    with lock_held_elsewhere(fake_bd.db_dir):
        code = job.run()
    assert code == 0
    logged = events(stream)
    busy = [e for e in logged if e["event"] == "lock.busy"]
    assert len(busy) == 1 and busy[0]["waited_seconds"] == 0.5
    assert logged[-1]["event"] == "tick.done" and logged[-1]["lock_busy"] is True
    assert api.all() == before
    assert [c["subcommand"] for c in fake_bd.calls()] == ["query"]
    # The same run once the dispatcher let go: both handled.
    job, stream = reaper(fake_bd, wait=0.5)
    assert job.run() == 0
    assert job.tally.requeued == [claimed]
    assert job.tally.blocked == [idle]


def test_the_reaper_waits_for_a_dispatcher_to_finish(fake_bd: FakeBdEnv) -> None:
    claimed = staged(fake_bd.api, "claimed", 0.1)
    # A dispatcher mid-hand-off: it holds the lock for a second and a half, then exits.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, str(fake_bd.db_dir / LOCK_FILE_NAME), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        job, _ = reaper(fake_bd, wait=30)
        started = time.monotonic()
        assert job.run() == 0
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert waited >= 0.5, "the reaper did not wait for the lock"
    assert job.tally.requeued == [claimed]
    assert not job.tally.lock_busy
