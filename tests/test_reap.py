"""The reaper run, in process: the threshold, its boundary, its reach, what counts as activity,
and the dispatch lock it must hold for every change."""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta, timezone

import pytest

from jobs import __main__ as cli
from jobs.beads import BdRejected
from jobs.log import iso_utc
from jobs.protocol import STAGE_KEY
from tests.support.harness import NOW, FakeClockStop, JobHarness, events_named
from tests.support.memory_store import MemoryStore

STAMP = iso_utc(NOW)


def stuck(
    store: MemoryStore, minutes: float, assignee: str = "agent", status: str = "in_progress"
) -> str:
    """A bead whose last change was `minutes` ago."""
    return store.add(
        f"idle {minutes}m",
        assignee=assignee,
        status=status,
        created_at=NOW - timedelta(days=1),
        updated_at=NOW - timedelta(minutes=minutes),
    )


def staged(store: MemoryStore, stage: str, minutes: float) -> str:
    bead = stuck(store, minutes)
    store.edit(bead, metadata={STAGE_KEY: stage})
    return bead


def test_blocks_stale_agent_beads_and_spares_fresh_ones(
    harness: JobHarness, store: MemoryStore
) -> None:
    stale = stuck(store, 31)
    fresh = stuck(store, 29)
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["outcome"] == "reaped"
    assert (run.summary["in_progress"], run.summary["due"]) == (2, 1)
    assert run.summary["blocked"] == [stale]
    assert run.event("queue.read")["due"] == [stale]
    blocked = run.event("reap.blocked")
    assert (blocked["bead"], blocked["idle_minutes"], blocked["threshold_minutes"]) == (
        stale,
        31,
        30,
    )
    assert store.bead(stale).status == "blocked"
    assert store.notes(stale) == [
        f"beads-reaper: no progress for 31m (threshold 30m) — blocking (beads-reaper, {STAMP})"
    ]
    assert store.bead(fresh).status == "in_progress"
    assert store.notes(fresh) == []
    assert harness.lock_is_free()


def test_another_instance_signs_with_its_own_cronjob(
    harness: JobHarness, store: MemoryStore
) -> None:
    stale = stuck(store, 31, assignee="reviewer")
    harness.reap(agent_assignee="reviewer", cronjob_name="reviewer-reaper")
    assert store.notes(stale) == [
        f"reviewer-reaper: no progress for 31m (threshold 30m) — blocking "
        f"(reviewer-reaper, {STAMP})"
    ]


def test_the_boundary_is_timezone_aware(harness: JobHarness, store: MemoryStore) -> None:
    at_29 = stuck(store, 29)
    at_31 = stuck(store, 31)
    # The same instant in +05:30: a comparison of naive wall times would be 5.5 h off.
    harness.clock.now = NOW.astimezone(timezone(timedelta(hours=5, minutes=30)))
    run = harness.reap()
    assert run.summary["blocked"] == [at_31]
    assert store.bead(at_29).status == "in_progress"


def test_the_threshold_is_configurable(harness: JobHarness, store: MemoryStore) -> None:
    bead = stuck(store, 11)
    spared = stuck(store, 9)
    run = harness.reap(reaper_threshold_minutes=10)
    assert run.summary["blocked"] == [bead]
    assert "no progress for 11m (threshold 10m)" in store.notes(bead)[-1]
    assert store.bead(spared).status == "in_progress"


def test_other_assignees_and_other_states_are_never_touched(
    harness: JobHarness, store: MemoryStore
) -> None:
    stuck(store, 120, assignee="alice")
    stuck(store, 120, status="open")
    stuck(store, 120, status="blocked")
    stuck(store, 120, assignee="")
    before = store.snapshot()
    run = harness.reap()
    assert run.code == 0
    assert run.summary["outcome"] == "queue_empty"
    assert run.summary["in_progress"] == 0
    assert store.snapshot() == before
    assert [(call.method, call.args) for call in store.log] == [
        ("queue", {"assignee": "agent", "status": "in_progress"})
    ]


def test_the_configured_assignee_is_the_one_reaped(harness: JobHarness, store: MemoryStore) -> None:
    mine = stuck(store, 45, assignee="bot@corp.example")
    other = stuck(store, 45)
    run = harness.reap(agent_assignee="bot@corp.example")
    assert run.code == 0, run.stdout
    assert run.summary["blocked"] == [mine]
    assert store.bead(other).status == "in_progress"


def test_no_result_cap_sixty_stale_beads_all_blocked(
    harness: JobHarness, store: MemoryStore
) -> None:
    beads = [stuck(store, 40) for _ in range(60)]
    run = harness.reap()
    assert run.code == 0
    assert sorted(run.summary["blocked"]) == sorted(beads)


def test_dry_run_decides_like_a_real_run_and_writes_nothing(
    harness: JobHarness, store: MemoryStore
) -> None:
    idle = stuck(store, 45)
    claimed = staged(store, "claimed", 1)
    stuck(store, 5)
    before = store.snapshot()
    dry = harness.reap(dry_run=True)
    assert dry.code == 0
    assert dry.summary["outcome"] == "dry_run"
    would = [(e["bead"], e["action"]) for e in events_named(dry, "dry_run.would_reap")]
    assert would == [(idle, "block"), (claimed, "requeue")]
    assert store.snapshot() == before
    assert set(store.methods()) == {"queue", "show"}
    assert not harness.lock_path.exists()
    real = harness.reap()
    assert (real.summary["blocked"], real.summary["requeued"]) == ([idle], [claimed])


def test_bd_failing_to_write_exits_1_and_names_the_bead(
    harness: JobHarness, store: MemoryStore
) -> None:
    bead = stuck(store, 45)
    before = store.snapshot()
    store.fail("update")
    run = harness.reap()
    assert run.code == 1
    [failed] = [e for e in run.events if e["level"] == "error"]
    assert (failed["event"], failed["bead"], failed["step"]) == ("bead.failed", bead, "block")
    assert failed["error"] == "bd update exited 1: injected failure"
    assert (run.summary["errors"], run.summary["skipped"]) == (1, [bead])
    assert run.summary["outcome"] == "error"
    assert events_named(run, "bead.skipped") == []  # the error line says it all
    assert store.snapshot() == before
    assert harness.lock_is_free()


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_a_bad_threshold_is_a_config_error(capsys: pytest.CaptureFixture[str], value: str) -> None:
    environ = {"REAPER_THRESHOLD_MINUTES": value, "BD_BIN": "/nonexistent/bd"}
    code = cli.main(["reap"], environ=environ, stream=io.StringIO())
    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("configuration error: REAPER_THRESHOLD_MINUTES Input should be")


def test_claimed_but_never_sent_goes_back_to_the_queue_at_once(
    harness: JobHarness, store: MemoryStore
) -> None:
    old = staged(store, "claimed", 11)
    # Seconds old: holding the lock proves its dispatcher is gone, so no grace period.
    young = staged(store, "claimed", 0.1)
    sent = staged(store, "sending", 2)
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["requeued"] == [old, young]
    assert [e["bead"] for e in events_named(run, "reap.requeued")] == [old, young]
    for bead, minutes in ((old, 11), (young, 0.1)):
        state = store.bead(bead)
        assert (state.status, state.metadata) == ("open", {})
        [note] = store.notes(bead)
        claimed_at = iso_utc(NOW - timedelta(minutes=minutes))
        assert note.startswith(f"beads-reaper: claimed at {claimed_at} but never sent to BeadBoard")
        assert note.endswith(f"not counted as a failed attempt (beads-reaper, {STAMP})")
    # Maybe sent: never requeued (it could run twice), blocked only once it goes quiet.
    state = store.bead(sent)
    assert (state.status, state.metadata) == ("in_progress", {STAGE_KEY: "sending"})
    assert harness.lock_is_free()


def test_sent_with_unknown_outcome_is_blocked_not_resent(
    harness: JobHarness, store: MemoryStore
) -> None:
    maybe_sent = staged(store, "sending", 31)
    run = harness.reap()
    assert run.summary["blocked"] == [maybe_sent]
    assert run.event("reap.blocked")["stage"] == "sending"
    state = store.bead(maybe_sent)
    assert (state.status, state.metadata) == ("blocked", {})
    [note] = store.notes(maybe_sent)
    assert "BeadBoard may or may not have started a job: check the agent" in note


def test_a_recent_comment_is_progress(harness: JobHarness, store: MemoryStore) -> None:
    talking = stuck(store, 45)
    quiet = stuck(store, 45)
    # The agent's comments, as bd stores them: rows of their own, updated_at untouched.
    harness.clock.now = NOW - timedelta(minutes=5)
    store.comment(talking, "still on it")
    harness.clock.now = NOW - timedelta(minutes=40)
    store.comment(quiet, "started")
    harness.clock.now = NOW
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["blocked"] == [quiet]
    assert store.bead(talking).status == "in_progress"
    assert store.notes(talking) == []
    skipped = run.event("reap.skipped")
    assert (skipped["bead"], skipped["detail"]) == (talking, "changed since the query")
    # Idle time counts from the latest sign of life, the comment included.
    assert "no progress for 40m" in store.notes(quiet)[-1]


def test_dry_run_agrees_with_a_real_run_about_a_recent_comment(
    harness: JobHarness, store: MemoryStore
) -> None:
    talking = stuck(store, 45)
    harness.clock.now = NOW - timedelta(minutes=2)
    store.comment(talking, "still on it")
    harness.clock.now = NOW
    real = harness.reap()
    assert real.summary["blocked"] == []
    dry = harness.reap(dry_run=True)
    assert [e for e in dry.events if e["event"].startswith("dry_run.")] == []
    assert dry.event("reap.skipped")["bead"] == talking


def test_a_bead_changed_since_the_query_is_left_alone(
    harness: JobHarness, store: MemoryStore
) -> None:
    closed = stuck(store, 45)
    # Between the query and the re-read the agent closes its bead.
    store.after("queue", lambda: store.edit(closed, status="closed"))
    run = harness.reap()
    assert run.code == 0
    assert run.summary["blocked"] == []
    assert run.event("reap.skipped")["bead"] == closed
    assert store.bead(closed).status == "closed"
    assert "update" not in store.methods()


def test_a_bead_gone_before_the_write_is_skipped(harness: JobHarness, store: MemoryStore) -> None:
    gone = stuck(store, 45)
    fine = stuck(store, 45)
    store.after("show", lambda: store.rows.pop(gone), bead=gone)
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["blocked"] == [fine]
    skipped = run.event("reap.skipped")
    assert skipped["bead"] == gone
    assert "no issue found" in skipped["detail"]


def test_a_bead_bd_cannot_show_is_skipped_and_the_rest_are_reaped(
    harness: JobHarness, store: MemoryStore
) -> None:
    odd = stuck(store, 45)
    # `bd show` prints a comment this client cannot read (text must be a string).
    comment = {"id": "c-1", "author": "x", "text": 5, "created_at": "2026-01-01T00:00:00Z"}
    store.edit(odd, comments=[comment])
    fine = stuck(store, 45)
    before = store.snapshot()[odd]
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["blocked"] == [fine]
    [skipped] = events_named(run, "bead.skipped")
    assert (skipped["bead"], skipped["level"]) == (odd, "warning")
    assert skipped["reason"].startswith(f"cannot re-read it: bd show {odd}: comments.0.text")
    assert run.summary["skipped"] == [odd]
    assert store.snapshot()[odd] == before


def test_a_bead_with_unreadable_metadata_is_skipped_once(
    harness: JobHarness, store: MemoryStore
) -> None:
    odd = stuck(store, 45)
    store.edit(odd, metadata=["x"])
    fine = stuck(store, 45)
    run = harness.reap()
    assert run.code == 0, run.stdout
    assert run.summary["blocked"] == [fine]
    assert [e["bead"] for e in events_named(run, "bead.skipped")] == [odd]
    assert run.summary["skipped"] == [odd]
    assert store.rows[odd]["status"] == "in_progress"


def test_nothing_due_never_touches_the_lock(harness: JobHarness, store: MemoryStore) -> None:
    stuck(store, 5)
    run = harness.reap()
    assert run.code == 0
    assert (run.summary["outcome"], run.summary["due"]) == ("nothing_due", 0)
    assert store.methods() == ["queue"]
    assert not harness.lock_path.exists()


def test_while_a_dispatcher_holds_the_lock_the_reaper_changes_nothing(
    harness: JobHarness, store: MemoryStore
) -> None:
    claimed = staged(store, "claimed", 0.1)
    idle = stuck(store, 45)
    before = store.snapshot()
    with harness.lock_held_elsewhere():
        run = harness.reap(lock_wait=0.1)
    assert run.code == 0
    assert run.event("lock.waiting")["up_to_seconds"] == 0.1
    [busy] = events_named(run, "lock.busy")
    assert busy["waited_seconds"] == 0.1
    assert run.events[-1]["event"] == "tick.done"
    assert run.summary["outcome"] == "lock_busy"
    assert store.snapshot() == before
    assert store.methods() == ["queue"]
    # The same run once the dispatcher let go: both handled.
    again = harness.reap()
    assert (again.summary["requeued"], again.summary["blocked"]) == ([claimed], [idle])


def test_the_reaper_waits_for_a_dispatcher_to_finish(
    harness: JobHarness, store: MemoryStore
) -> None:
    claimed = staged(store, "claimed", 0.1)
    with harness.lock_held_elsewhere() as dispatcher:
        # The dispatcher finishes its hand-off a moment after the reaper starts waiting.
        threading.Timer(0.1, dispatcher.release).start()
        run = harness.reap(lock_wait=5)
    assert run.code == 0, run.stdout
    assert run.event("lock.waiting")["up_to_seconds"] == 5
    assert events_named(run, "lock.busy") == []
    assert run.summary["requeued"] == [claimed]
    assert run.summary["outcome"] == "reaped"


def test_lock_lost_mid_run_stops_every_write(harness: JobHarness, store: MemoryStore) -> None:
    first = stuck(store, 45)
    second = stuck(store, 45)
    # Someone replaced the lock file while the reaper re-read its first bead.
    store.after("show", harness.lock_path.unlink, nth=1)
    run = harness.reap()
    assert run.code == 1
    [error] = [e for e in run.events if e["level"] == "error"]
    assert error["event"] == "lock.lost"
    assert "is no longer held by this run" in error["error"]
    assert run.summary["blocked"] == []
    assert "update" not in store.methods()
    assert store.bead(first).status == store.bead(second).status == "in_progress"


def test_a_lost_lock_is_the_reapers_outcome_as_it_is_the_dispatchers(
    harness: JobHarness, store: MemoryStore
) -> None:
    stuck(store, 45)
    store.after("show", harness.lock_path.unlink)
    assert harness.reap().summary["outcome"] == "lock_lost"


def test_sigterm_leaves_the_rest_for_the_next_run(harness: JobHarness, store: MemoryStore) -> None:
    first = stuck(store, 45)
    second = stuck(store, 45)
    stop = FakeClockStop(harness.clock)
    store.after("update", stop.request, bead=first)
    run = harness.reap(stop=stop)
    assert run.code == 0
    assert run.summary["outcome"] == "stopped"
    assert run.event("run.stopping")["detail"] == "SIGTERM: left the rest for the next run"
    assert run.summary["blocked"] == [first]
    assert store.bead(second).status == "in_progress"
    assert harness.lock_is_free()


def test_a_refused_write_is_a_skip_not_an_error(harness: JobHarness, store: MemoryStore) -> None:
    bead = stuck(store, 45)
    store.fail("update", error=BdRejected, message="bd update: issue already claimed by alice")
    run = harness.reap()
    assert run.code == 0
    assert run.event("reap.skipped")["detail"] == "bd update: issue already claimed by alice"
    assert run.summary["errors"] == 0
    assert store.bead(bead).status == "in_progress"


def test_log_lines_are_json_with_the_run_id(harness: JobHarness, store: MemoryStore) -> None:
    stuck(store, 45)
    run = harness.reap()
    assert {(e["job"], e["run_id"], e["ts"]) for e in run.events} == {("reap", "test-run", STAMP)}
    assert json.loads(run.stdout.splitlines()[-1])["event"] == "tick.done"
