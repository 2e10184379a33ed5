"""Only what `bd ready` offers goes out, against the real bd 1.0.2; `explain` says why not.

Each dispatch test fails on a dispatcher that reads `assignee=agent AND status=open` alone.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub, Reply
from devtools.pods.process import JobRun, start_jobs
from jobs.beadboard import AgentHealth, BeadBoard
from jobs.beads import BdClient, BeadStore
from jobs.dispatch import Dispatcher
from jobs.lock import LOCK_FILE_NAME, FileLock
from jobs.log import Clock, EventLog
from jobs.run import RunContext
from jobs.settings import JobSettings
from tests.integration.conftest import RealJobRunner, real_env
from tests.support.harness import FakeClock, closed_port, posted
from tests.support.memory_store import MemoryStore
from tests.support.routes import DISPATCH


def agent_task(bd: RealBd, title: str, *extra: str, priority: int = 2) -> str:
    """A bead for the agent, with acceptance criteria; `extra`: more `bd create` flags."""
    return bd.create(title, priority=priority, assignee="agent", acceptance="it works", extra=extra)


@pytest.fixture
def slots(beadboard: BeadBoardStub) -> dict[str, str]:
    """Ten free agent slots: whatever bd offers goes out in one run."""
    beadboard.health.capacity = 10
    return {"AGENT_HEALTH_URL": f"{beadboard.url}/health", "MAX_IN_FLIGHT": "10"}


def dispatch(run_real: RealJobRunner, **env: str) -> JobRun:
    run = run_real("dispatch", **env)
    assert run.code == 0, run.stdout + run.stderr
    return run


# -- what goes out ----------------------------------------------------------------------


def test_a_chain_goes_out_one_link_at_a_time(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner, slots: dict[str, str]
) -> None:
    a = agent_task(real_bd, "A", priority=3)
    b = agent_task(real_bd, "B", priority=1)
    c = agent_task(real_bd, "C", priority=0)
    real_bd.depend(b, a)
    real_bd.depend(c, b)
    dispatch(run_real, **slots)
    assert posted(beadboard) == [a]
    real_bd.close(a)
    dispatch(run_real, **slots)
    assert posted(beadboard) == [a, b]
    real_bd.close(b)
    dispatch(run_real, **slots)
    assert posted(beadboard) == [a, b, c]


def test_a_dependant_goes_out_on_the_next_poll_once_its_blocker_closes(
    real_bd: RealBd, beadboard: BeadBoardStub, slots: dict[str, str]
) -> None:
    a = agent_task(real_bd, "A")
    b = agent_task(real_bd, "B")
    real_bd.depend(b, a)
    env = real_env(
        real_bd,
        beadboard.url,
        DISPATCHER_WINDOW_SECONDS="60",
        POLL_INTERVAL_SECONDS="1",
        **slots,
    )
    process = start_jobs(["dispatch"], env)
    try:
        beadboard.wait_for(DISPATCH, count=1, timeout=60)
        real_bd.close(a)  # what the agent does when it is done
        closed_at = time.monotonic()
        beadboard.wait_for(DISPATCH, count=2, timeout=30)
        waited = time.monotonic() - closed_at
    finally:
        process.terminate()
        process.communicate(timeout=60)
    assert posted(beadboard) == [a, b]
    # One poll interval, plus the bd calls of the poll that sends it (embedded mode).
    assert waited < 10, f"B went out {waited:.1f} s after A closed"


@pytest.mark.parametrize("kind", ["blocks", "conditional-blocks"])
def test_an_open_blocker_holds_its_dependant_back(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner, kind: str
) -> None:
    blocker = real_bd.create("a human's", assignee="alice", acceptance="x")
    waiting = agent_task(real_bd, "waits")
    real_bd.depend(waiting, blocker, kind)
    assert dispatch(run_real).summary["outcome"] == "queue_empty"
    real_bd.close(blocker)
    dispatch(run_real)
    assert posted(beadboard) == [waiting]


def test_waits_for_holds_back_until_the_spawners_children_are_closed(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    spawner = real_bd.create("spawner", assignee="alice", extra=("--type", "epic"))
    child = real_bd.create("child", assignee="alice", extra=("--parent", spawner))
    waiting = agent_task(real_bd, "waits")
    real_bd.depend(waiting, spawner, "waits-for")
    assert dispatch(run_real).summary["outcome"] == "queue_empty"
    real_bd.close(child)
    dispatch(run_real)
    assert posted(beadboard) == [waiting]


def test_a_closed_blocker_holds_nothing_back(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    blocker = real_bd.create("done", assignee="alice")
    real_bd.close(blocker)
    bead = agent_task(real_bd, "free")
    real_bd.depend(bead, blocker)
    dispatch(run_real)
    assert posted(beadboard) == [bead]


def test_bd_create_defer_keeps_a_bead_back_and_a_passed_defer_does_not(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    later = agent_task(real_bd, "later", "--defer", "+2h")
    assert real_bd.show(later)["status"] == "open"  # only defer_until holds it back
    assert dispatch(run_real).summary["outcome"] == "queue_empty"
    real_bd.update(later, "--defer", "2020-01-01")  # its time has come
    dispatch(run_real)
    assert posted(beadboard) == [later]


def test_bd_update_defer_keeps_a_bead_back(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_task(real_bd, "later")
    real_bd.update(bead, "--defer", "+2h")
    assert dispatch(run_real).summary["outcome"] == "queue_empty"
    assert posted(beadboard) == []


def test_a_task_under_an_epic_blocked_by_an_open_epic_waits_until_it_closes(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    review = real_bd.create("design review", assignee="alice", extra=("--type", "epic"))
    epic = real_bd.create("build it", assignee="alice", extra=("--type", "epic"))
    real_bd.depend(epic, review)
    task = agent_task(real_bd, "task", "--parent", epic)
    assert dispatch(run_real).summary["outcome"] == "queue_empty"
    real_bd.close(review)
    dispatch(run_real)
    assert posted(beadboard) == [task]


def test_queue_read_counts_what_dependencies_and_deferral_hold_back(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    first = agent_task(real_bd, "A")
    blocked = agent_task(real_bd, "B")
    real_bd.depend(blocked, first)
    later = agent_task(real_bd, "later", "--defer", "+2h")
    read = dispatch(run_real).event("queue.read")
    assert (read["matched"], read["ready"], read["eligible"]) == (3, 1, 1)
    assert (read["held_back_dependencies"], read["held_back_deferred"]) == ([blocked], [later])


# -- the memory store offers what bd offers, under the same jobs --------------------------


class Graph(Protocol):
    def add(self, title: str, *, agent: bool = True, extra: tuple[str, ...] = ()) -> str: ...
    def depend(self, bead: str, on: str, kind: str = "blocks") -> None: ...
    def close(self, bead: str) -> None: ...


class RealGraph:
    def __init__(self, bd: RealBd) -> None:
        self.bd = bd

    def add(self, title: str, *, agent: bool = True, extra: tuple[str, ...] = ()) -> str:
        if agent:
            return agent_task(self.bd, title, *extra)
        return self.bd.create(title, assignee="alice", acceptance="x", extra=extra)

    def depend(self, bead: str, on: str, kind: str = "blocks") -> None:
        self.bd.depend(bead, on, kind)

    def close(self, bead: str) -> None:
        self.bd.close(bead)


class MemoryGraph:
    """The same `bd create` flags, as the memory store's seeding arguments."""

    def __init__(self, store: MemoryStore, now: datetime) -> None:
        self.store, self.now = store, now

    def add(self, title: str, *, agent: bool = True, extra: tuple[str, ...] = ()) -> str:
        flags = dict(zip(extra[::2], extra[1::2], strict=True))
        kwargs: dict[str, Any] = {"issue_type": flags.get("--type", "task")}
        if "--parent" in flags:
            kwargs["parent"] = flags["--parent"]
        if "--defer" in flags:
            kwargs["defer_until"] = self.now + DEFERRALS[flags["--defer"]]
        return self.store.add(title, assignee="agent" if agent else "alice", **kwargs)

    def depend(self, bead: str, on: str, kind: str = "blocks") -> None:
        self.store.depend(bead, on, kind)

    def close(self, bead: str) -> None:
        self.store.edit(bead, status="closed")


DEFERRALS = {
    "+2h": timedelta(hours=2),
    "+24h": timedelta(hours=24),
    "2020-01-01": -timedelta(days=9999),
}


def every_rule(graph: Graph) -> dict[str, str]:
    """One bead (or chain) per rule of bd ready; the titles name what holds each back."""
    ids: dict[str, str] = {}

    def add(title: str, *, agent: bool = True, extra: tuple[str, ...] = ()) -> str:
        ids[title] = graph.add(title, agent=agent, extra=extra)
        return ids[title]

    graph.depend(add("chain-2"), add("chain-1"))
    graph.depend(add("chain-3"), ids["chain-2"])
    graph.depend(add("conditional"), add("human-open", agent=False), "conditional-blocks")
    spawner = add("spawner", agent=False, extra=("--type", "epic"))
    add("spawned", agent=False, extra=("--parent", spawner))
    graph.depend(add("waits-for"), spawner, "waits-for")
    add("deferred", extra=("--defer", "+2h"))
    add("defer-passed", extra=("--defer", "2020-01-01"))
    review = add("review", agent=False, extra=("--type", "epic"))
    epic = add("epic", agent=False, extra=("--type", "epic"))
    graph.depend(epic, review)
    add("under-blocked-epic", extra=("--parent", epic))
    later_epic = add("deferred-epic", agent=False, extra=("--type", "epic", "--defer", "+24h"))
    add("under-deferred-epic", extra=("--parent", later_epic))
    done = add("done", agent=False)
    graph.close(done)
    graph.depend(add("closed-blocker"), done)
    return ids


def run_dispatcher(store: BeadStore, clock: Clock, beads_dir: Path, board: BeadBoardStub) -> None:
    settings = JobSettings(
        beadboard_url=board.url,
        beads_db=beads_dir,
        agent_health_url=f"{board.url}/health",
        max_in_flight=20,
    )
    log = EventLog("dispatch", "t", clock, io.StringIO())
    context = RunContext(settings, store, FileLock(beads_dir / LOCK_FILE_NAME), clock, log)
    health = AgentHealth(settings.agent_health_url, settings.http_timeout_seconds)
    with BeadBoard(board.url, settings.http_timeout_seconds) as client:
        assert Dispatcher(context, client, load=health).run() == 0
    health.close()


def sent_by_round(make: Callable[[], tuple[Graph, BeadStore, Clock, Path]]) -> list[set[str]]:
    """What goes out: with every rule in place, then with every blocker closed, then the last."""
    graph, store, clock, beads_dir = make()
    rounds: list[set[str]] = []
    with BeadBoardStub() as board:
        board.health.capacity = 20
        ids = every_rule(graph)
        titles = {bead: title for title, bead in ids.items()}
        for closing in ([], ["chain-1", "human-open", "spawned", "review"], ["chain-2"]):
            for title in closing:
                graph.close(ids[title])
            before = len(board.requests_to(DISPATCH))
            run_dispatcher(store, clock, beads_dir, board)
            rounds.append({titles[r.json["taskId"]] for r in board.requests_to(DISPATCH)[before:]})
    return rounds


def test_the_memory_store_offers_what_bd_ready_offers(
    bd_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # real bd writes state under HOME
    (tmp_path / "home").mkdir()

    def real() -> tuple[Graph, BeadStore, Clock, Path]:
        bd = RealBd(bd_binary, tmp_path / "real").init()
        client = BdClient(str(bd_binary), bd.beads_dir, actor="agent", timeout_seconds=60)
        return RealGraph(bd), client, lambda: datetime.now(UTC), bd.beads_dir

    def memory() -> tuple[Graph, BeadStore, Clock, Path]:
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        store = MemoryStore(clock)
        beads_dir = tmp_path / "memory"
        beads_dir.mkdir()
        return MemoryGraph(store, clock()), store, clock, beads_dir

    from_bd = sent_by_round(real)
    assert from_bd == [
        {"chain-1", "defer-passed", "closed-blocker"},
        {"chain-2", "conditional", "waits-for", "under-blocked-epic"},
        {"chain-3"},
    ]
    assert sent_by_round(memory) == from_bd


# -- explain: one line per reason ---------------------------------------------------------


def explain(run_real: RealJobRunner, bead: str, **env: str) -> list[str]:
    run = run_real("explain", bead, **env)
    assert run.code == 0, run.stdout + run.stderr
    prefix = f"{bead}: "
    lines = run.stdout.splitlines()
    assert all(line.startswith(prefix) for line in lines), run.stdout
    return [line.removeprefix(prefix) for line in lines]


def test_explain_not_assigned_to_the_agent(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = real_bd.create("alice's", assignee="alice", acceptance="x")
    assert explain(run_real, bead) == [
        "not assigned to the agent: assigned to 'alice'; the dispatcher serves 'agent'"
    ]


def test_explain_status(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = agent_task(real_bd, "closed")
    real_bd.close(bead)
    assert explain(run_real, bead) == ["status is closed, not open"]


def test_explain_no_acceptance_criteria(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = real_bd.create("vague", assignee="agent")
    assert explain(run_real, bead) == [
        "no acceptance criteria: the agent needs them to know when it is done"
    ]


def test_explain_blocked_by_ids_and_their_status(real_bd: RealBd, run_real: RealJobRunner) -> None:
    first = real_bd.create("first", assignee="alice")
    second = real_bd.create("second", assignee="alice")
    real_bd.update(second, "--status", "in_progress")
    bead = agent_task(real_bd, "waits")
    real_bd.depend(bead, first)
    real_bd.depend(bead, second)
    [line] = explain(run_real, bead)
    assert line.startswith("blocked by ")
    assert sorted(line.removeprefix("blocked by ").split(", ")) == sorted(
        [f"{first} (open)", f"{second} (in_progress)"]
    )


def test_explain_deferred_until(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = agent_task(real_bd, "later", "--defer", "2099-01-15")
    [line] = explain(run_real, bead)
    assert line.startswith("deferred until 2099-01-15T")


def test_explain_parent_blocked(real_bd: RealBd, run_real: RealJobRunner) -> None:
    review = real_bd.create("review", assignee="alice", extra=("--type", "epic"))
    epic = real_bd.create("epic", assignee="alice", extra=("--type", "epic"))
    real_bd.depend(epic, review)
    task = agent_task(real_bd, "task", "--parent", epic)
    assert explain(run_real, task) == [f"parent {epic} is blocked (by {review})"]


def test_explain_parent_deferred(real_bd: RealBd, run_real: RealJobRunner) -> None:
    epic = real_bd.create("epic", extra=("--type", "epic", "--defer", "2099-01-15"))
    task = agent_task(real_bd, "task", "--parent", epic)
    [line] = explain(run_real, task)
    assert line.startswith(f"parent {epic} deferred until 2099-01-15T")


def test_explain_blocked_after_failed_attempts(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_task(real_bd, "refused")
    beadboard.program(DISPATCH, Reply(status=400, json={"error": "bead not found"}))
    run_real("dispatch", MAX_DISPATCH_ATTEMPTS="1")
    assert explain(run_real, bead) == [
        "blocked after 1 failed attempts (last: HTTP 400 bead not found); "
        "fix the cause, then set it back to open"
    ]


def test_explain_waiting_for_a_free_agent_slot(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_task(real_bd, "ready")
    beadboard.busy = True
    assert explain(run_real, bead) == ["waiting for a free agent slot (number 1 in line)"]


def test_explain_names_the_agent_service_when_its_health_does_not_answer(
    real_bd: RealBd, run_real: RealJobRunner
) -> None:
    bead = agent_task(real_bd, "ready")
    health = f"http://127.0.0.1:{closed_port()}/health"
    [line] = explain(run_real, bead, AGENT_HEALTH_URL=health)
    unknown = f"agent slots unknown (claude-agent-service GET {health}: connection failed"
    assert line.startswith(f"ready, number 1 in line; {unknown}")


def test_explain_kill_switch_off(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = agent_task(real_bd, "ready")
    assert explain(run_real, bead, DISPATCHER_ENABLED="false") == [
        "kill switch off (DISPATCHER_ENABLED=false): nothing is dispatched"
    ]


def test_explain_next_in_line(real_bd: RealBd, run_real: RealJobRunner) -> None:
    bead = agent_task(real_bd, "ready")
    assert explain(run_real, bead) == ["next in line: the next poll dispatches it"]


def test_explain_dispatched_as_job(
    real_bd: RealBd, beadboard: BeadBoardStub, run_real: RealJobRunner
) -> None:
    bead = agent_task(real_bd, "sent")
    dispatch(run_real)
    [line] = explain(run_real, bead)
    assert line.startswith("dispatched as job job-1 at ")
    assert line.endswith("; status in_progress")


def test_explain_an_unknown_id_is_one_line_and_exit_2(run_real: RealJobRunner) -> None:
    run = run_real("explain", "tb-nope")
    assert (run.code, run.stdout) == (2, "")
    [line] = run.stderr.splitlines()
    assert line.startswith("explain: bd does not know bead 'tb-nope'")
