"""One regression test per defect the adversarial review reproduced, against the real bd.

Each test drives the jobs only through their CLI (`python -m jobs`) and bd, so it runs the
same against any version of jobs/: every one of them failed on the lock-bead dispatcher
this file was written against (commit e5bde5a), and passes now.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import AGENT_DISPATCH, Reply
from tests.integration.interleave import (
    LEGACY_LOCK_BEAD,
    Companion,
    Scenario,
    dispatch_records,
    settle,
    verdict,
)

# The first call that writes a bead's hand-off stage, in both the old and the new jobs.
FIRST_SENDING_MARKER = r" update \S+ .*auto_dispatch_stage=sending"
# The claim of a bead or of a batch (`update ID ID … --claim`).
FIRST_BEAD_CLAIM = r" update (?!autodispatch-lock)(\S+ )+--claim"


def _agent_bead(
    bd: RealBd, title: str, *, priority: int = 2, assignee: str = "agent", description: str = ""
) -> str:
    return bd.create(
        title, priority=priority, assignee=assignee, acceptance="done", description=description
    )


# -- 1. reaper during a slow send ---------------------------------------------------------


def test_a_reaper_whose_clock_runs_ahead_never_requeues_a_bead_a_live_dispatcher_holds(
    scenario: Scenario,
) -> None:
    run, _, fired = scenario.run_injected(
        FIRST_SENDING_MARKER, "reaper", jobs=[Companion("reap", 11)]
    )
    assert fired is not None
    settle(scenario)
    assert not verdict(scenario), (verdict(scenario), run.stdout, scenario.injected_output)
    assert sorted(scenario.posts().values()) == [1, 1, 1]


# -- 2. stale-lock takeover while the holder still works ----------------------------------


def test_a_second_dispatcher_with_its_clock_an_hour_ahead_cannot_take_the_lock(
    scenario: Scenario,
) -> None:
    run, _, fired = scenario.run_injected(
        FIRST_BEAD_CLAIM, "dispatcher", jobs=[Companion("dispatch", 60)]
    )
    assert fired is not None
    settle(scenario)
    assert not verdict(scenario), (verdict(scenario), run.stdout, scenario.injected_output)
    assert '"event": "lock.busy"' in scenario.injected_output


# -- 3. a transient `bd show` failure looks like "lock missing" ----------------------------


def test_a_failing_bd_show_in_another_run_never_hands_the_lock_to_a_third(
    scenario: Scenario, tmp_path: Path
) -> None:
    failing_show = tmp_path / "bd-failing-show"
    failing_show.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        '  if [ "$arg" = show ]; then\n'
        '    echo \'{"error": "no issues found matching the provided IDs"}\'; exit 1\n'
        "  fi\n"
        "done\n"
        f'exec "{scenario.bd.binary}" "$@"\n'
    )
    failing_show.chmod(0o755)
    run, _, fired = scenario.run_injected(
        FIRST_BEAD_CLAIM,
        "dispatcher",
        jobs=[
            Companion("dispatch", 60, {"BD_BIN": str(failing_show)}),
            Companion("dispatch", 60),
        ],
    )
    assert fired is not None
    settle(scenario)
    assert not verdict(scenario), (verdict(scenario), run.stdout, scenario.injected_output)


# -- 4. a 2xx that is not `200 + string job_id` -------------------------------------------


def test_any_2xx_counts_as_sent_and_is_never_sent_again(scenario: Scenario) -> None:
    scenario.board.program(
        AGENT_DISPATCH,
        Reply(status=202),
        Reply(status=201, json={"job_id": 41}),
        Reply(status=200, json={"status": "queued"}),
    )
    first = scenario.run("dispatch")
    second = scenario.run("dispatch", 5)
    assert sorted(scenario.posts().values()) == [1, 1, 1], (first.stdout, second.stdout)
    for bead in scenario.beads:
        state = scenario.state(bead)
        assert state["status"] == "in_progress"
        assert dispatch_records(state), state
    records = [dispatch_records(scenario.state(b))[0] for b in scenario.beads]
    assert any("job=41" in r for r in records), records
    # The 202 with an empty body is not BeadBoard's answer (a JSON object): flagged.
    assert sum("without a job id" in r for r in records) == 1, records
    assert sum(r.startswith("dispatched, unconfirmed: HTTP 202") for r in records) == 1, records


# -- 5. one bead with non-object metadata --------------------------------------------------


def test_a_bead_with_non_object_metadata_is_skipped_and_the_queue_goes_on(
    scenario: Scenario,
) -> None:
    odd = _agent_bead(scenario.bd, "odd metadata", priority=0)
    scenario.bd.update(odd, "--metadata", '["x"]')
    working = _agent_bead(scenario.bd, "odd and in progress")
    scenario.bd.update(working, "--status", "in_progress", "--metadata", '["y"]')
    dispatch = scenario.run("dispatch")
    assert sorted(scenario.posts().values()) == [1, 1, 1], dispatch.stdout
    assert odd in dispatch.stdout and '"event": "bead.skipped"' in dispatch.stdout
    reap = scenario.run("reap", 45)
    assert reap.code == 0, reap.stdout
    assert working in reap.stdout


# -- 6. one bead that cannot be updated ----------------------------------------------------


def test_a_bead_bd_cannot_update_does_not_block_the_beads_behind_it(
    scenario: Scenario,
) -> None:
    # Over ~64 KB in all, bd 1.0.2 can no longer record an update event for it.
    huge = _agent_bead(scenario.bd, "huge", priority=0, description="d" * 40000)
    scenario.bd.update(huge, "--design", "e" * 30000)
    first = scenario.run("dispatch")
    second = scenario.run("dispatch", 3)
    assert scenario.posts() == dict.fromkeys(scenario.beads, 1), (first.stdout, second.stdout)
    assert scenario.bd.show(huge)["status"] == "open"
    # Measured before the claim (jobs/rowsize.py): never claimed, one warning per run.
    [warning] = [e for e in first.events if e["event"] == "bead.too_large"]
    assert (warning["bead"], warning["limit"]) == (huge, 65535), first.stdout
    assert warning["size"] > 65535
    assert first.code == 0 and not [e for e in first.events if e["event"] == "bead.failed"]


# -- 7. an assignee bd's query parser cannot take bare -------------------------------------


def test_an_assignee_with_an_at_sign_reaches_bd_quoted(scenario: Scenario) -> None:
    bead = _agent_bead(scenario.bd, "for the corp agent", assignee="agent@corp")
    scenario.bd.update(scenario.beads[0], "--assignee", "agent@corp")
    dispatch = scenario.run("dispatch", AGENT_ASSIGNEE="agent@corp")
    assert dispatch.code == 0, dispatch.stdout + dispatch.stderr
    posted = scenario.posts()
    assert posted[scenario.beads[0]] == 1
    assert [r.json for r in scenario.board.requests_to(AGENT_DISPATCH)].count({"taskId": bead}) == 1
    reap = scenario.run("reap", 45, AGENT_ASSIGNEE="agent@corp")
    assert reap.code == 0, reap.stdout + reap.stderr
    assert scenario.bd.show(bead)["status"] == "blocked"


# -- 8. repeated 409 answers ---------------------------------------------------------------


def test_a_409_backs_the_bead_off_for_the_rest_of_the_window(scenario: Scenario) -> None:
    # One agent bead, so every poll after the first is a poll in which it is held back.
    bead, *others = scenario.beads
    for other in others:
        scenario.bd.update(other, "--assignee", "alice")
    scenario.board.set_handler(
        AGENT_DISPATCH, lambda request: Reply(status=409, json={"error": "Agent is busy"})
    )
    run = scenario.run(
        "dispatch",
        DISPATCHER_WINDOW_SECONDS="15",
        POLL_INTERVAL_SECONDS="1",
        AGENT_HEALTH_URL="",
    )
    assert run.summary["polls"] >= 3, run.stdout
    assert scenario.posts()[bead] == 1
    state = scenario.bd.show(bead)
    assert state["status"] == "open"
    assert sum("agent busy" in line for line in state["notes"].splitlines()) == 1, state
    claims = [e for e in run.events if e["event"] == "claim.done"]
    assert len(claims) == 1, run.stdout  # no claim/unclaim churn after the 409


# -- lower severity ------------------------------------------------------------------------


def test_a_bd_failure_mid_send_returns_every_unsent_bead_in_the_same_run(
    scenario: Scenario,
) -> None:
    run, _, fired = scenario.run_injected(FIRST_SENDING_MARKER, "fail")
    assert fired is not None
    posts = scenario.posts()
    for bead in scenario.beads:
        state = scenario.state(bead)
        if posts[bead] == 0:
            assert state["status"] == "open", (bead, state, run.stdout)
        else:
            assert state["status"] == "in_progress" and dispatch_records(state), state


def test_the_agents_first_note_survives_the_dispatchers_record_of_the_post(
    scenario: Scenario,
) -> None:
    first = scenario.beads[0]
    agent_note = ["note", first, "claimed by agent job-1"]
    record = rf" (comments add {first}|update {first} .*--append-notes dispatched)"
    run, calls, fired = scenario.run_injected(record, "agent_note", agent_note=agent_note)
    assert fired is not None, calls
    assert "claimed by agent job-1" in scenario.state(first)["notes"], run.stdout
    # Whatever the timing: after the POST no dispatcher write rewrites the notes field.
    # Beads of equal priority may be dispatched in any order: find this bead's own send.
    first_post = next(
        i for i, call in enumerate(calls) if first in call and "sending" in " ".join(call)
    )
    after = [c for c in calls[first_post + 1 :] if first in c]
    assert not any("--append-notes" in c or "--notes" in c for c in after), after


def test_a_comment_is_progress_to_the_reaper(scenario: Scenario) -> None:
    bead = scenario.beads[0]
    scenario.bd.update(bead, "--status", "in_progress")
    updated = datetime.fromisoformat(scenario.bd.show(bead)["updated_at"].replace("Z", "+00:00"))
    time.sleep(12)  # the comment must be newer than updated_at by more than the margin below
    scenario.bd.run("comments", "add", bead, "--", "step 3 of 5 done", actor="agent")
    comment_at = datetime.fromisoformat(
        scenario.bd.show(bead)["comments"][-1]["created_at"].replace("Z", "+00:00")
    )
    assert comment_at - updated >= timedelta(seconds=11)
    # Threshold 1 min: idle by updated_at (>= 61 s), fresh by the comment (50 s).
    now = comment_at + timedelta(seconds=50)
    ahead = (now - datetime.now(UTC)).total_seconds() / 60
    reap = scenario.run("reap", ahead, REAPER_THRESHOLD_MINUTES="1")
    assert reap.code == 0, reap.stdout
    assert scenario.bd.show(bead)["status"] == "in_progress", reap.stdout


def test_an_existing_lock_bead_is_left_alone(scenario: Scenario) -> None:
    before = scenario.bd.show(LEGACY_LOCK_BEAD)
    scenario.run("dispatch")
    scenario.run("reap", 45)
    after = scenario.bd.show(LEGACY_LOCK_BEAD)
    assert sorted(scenario.posts().values()) == [1, 1, 1]
    keys = ("status", "assignee", "notes", "updated_at")
    assert {k: after.get(k) for k in keys} == {k: before.get(k) for k in keys}


def test_the_reaper_leaves_a_bead_the_agent_closed_after_its_query(scenario: Scenario) -> None:
    bead = scenario.beads[0]
    scenario.bd.update(bead, "--status", "in_progress")
    run, _, fired = scenario.run_injected(
        rf" show {bead}", "agent", job="reap", agent_note=["close", bead, "--reason", "done"],
        minutes_ahead=45,
    )  # fmt: skip
    assert fired is not None, run.stdout
    assert scenario.bd.show(bead)["status"] == "closed", run.stdout
