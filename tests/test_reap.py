"""The reaper tick through its CLI against the fake bd: the threshold, its boundary, its reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.conftest import JobRunner
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
    stuck(fake_bd.api, 45)
    before = fake_bd.api.all()
    result = run_job("reap", FAKE_BD_FAIL="update", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 1
    assert result.event("reap.failed")
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


def test_claimed_but_never_sent_goes_back_to_the_queue(
    fake_bd: FakeBdEnv, run_job: JobRunner
) -> None:
    api = fake_bd.api
    orphan = staged(api, "claimed", 11)
    young = staged(api, "claimed", 2)
    result = run_job("reap", AUTODISPATCH_NOW=NOW.isoformat())
    assert result.code == 0, result.stdout
    assert result.summary["requeued"] == [orphan]
    state = api.get(orphan)
    assert state["status"] == "open"
    assert "auto_dispatch_stage" not in state.get("metadata", {})
    assert "never sent to BeadBoard" in state["notes"].splitlines()[-1]
    assert api.get(young)["status"] == "in_progress"


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
