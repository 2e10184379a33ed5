"""The bench's measurements: real bd, the real jobs as processes, a loopback agent.

Each function runs one experiment and returns its raw figures; report.py turns them into
tables. The idle window's are in idle.py.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.config import BeadsAutoDispatchArgs, settings_from
from components.cron import parse_schedule
from components.names import DISPATCHER_NAME, REAPER_NAME
from devtools.bench.agent_sim import AgentSimulator
from devtools.localservices.bd import RealBd
from devtools.localservices.dolt import DOLT_PASSWORD, DoltServer, dolt_server
from devtools.manifests.mocks import render_program
from devtools.pods.process import base_env, run_jobs, start_jobs


def peak_rss_mib(done: Mapping[str, Any]) -> tuple[float, float]:
    """Peak RSS in MiB of the jobs' python process and of its largest child (bd, or a fork
    that inherited python's size), from a `tick.done` line (the one place naming them)."""
    return done["python_peak_rss_mib"], done["child_peak_rss_mib"]


def fresh_db(binary: Path, root: Path, name: str) -> RealBd:
    """A new embedded-mode database: the first dispatcher run on it dispatches at once."""
    return RealBd(binary, root / name).init(prefix=name[:6])


def job_env(bd: RealBd, url: str, **extra: str) -> dict[str, str]:
    return base_env(
        **bd.env(), BD_BIN=str(bd.binary), BEADS_DB=str(bd.beads_dir), BEADBOARD_URL=url, **extra
    )


def server_job_env(
    server: DoltServer, root: Path, name: str, url: str, **extra: str
) -> dict[str, str]:
    """The pod's env against the dolt sql-server: rendered metadata.json, password via env."""
    home = root / f"{name}-home"
    home.mkdir(exist_ok=True)
    env = base_env(
        HOME=str(home),
        BD_BIN=str(server.bd),
        BEADS_DB=str(root / f"{name}-beads"),
        BEADS_METADATA_FILE=str(server.metadata_file),
        BEADS_DOLT_PASSWORD=DOLT_PASSWORD,
        BEADBOARD_URL=url,
    )
    return env | extra


def poll_env(settings: BeadsAutoDispatchArgs) -> dict[str, str]:
    """How a preset's watch window polls: its interval, and whether the change detector runs."""
    return {
        "POLL_INTERVAL_SECONDS": str(settings.poll_interval_seconds),
        "CHANGE_DETECTION": "true" if settings.change_detection else "false",
    }


def summary(stdout: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    done = [line for line in lines if line.get("event") == "tick.done"]
    return done[-1] if done else {}


# -- 1. pods per day --------------------------------------------------------------------


def schedules(presets: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, Any]]:
    """Per preset: the rendered CronJobs' schedules, their runs per day, the window."""
    figures = {}
    for name, config in presets.items():
        rendered = render_program(dict(config))
        dispatcher = rendered.cronjob(DISPATCHER_NAME)["spec"]["schedule"]
        reaper = rendered.cronjob(REAPER_NAME)["spec"]["schedule"]
        figures[name] = {
            "dispatcher": dispatcher,
            "reaper": reaper,
            "dispatcher_runs": parse_schedule(dispatcher).runs_per_day(),
            "reaper_runs": parse_schedule(reaper).runs_per_day(),
            "window": settings_from(dict(config)).dispatcher_window_seconds,
        }
    return figures


# -- 2. latency -------------------------------------------------------------------------


def original_tick(binary: Path, root: Path, rounds: int = 5) -> list[float]:
    """Wall time of one original-style pass (window 0) that dispatches one bead."""
    bd = fresh_db(binary, root, "orig")
    durations = []
    with AgentSimulator(capacity=1000, run_seconds=0.0) as agent:
        for index in range(rounds):
            bd.create(f"orig {index}", assignee="agent", acceptance="x")
            started = time.monotonic()
            result = run_jobs(["dispatch"], job_env(bd, agent.url))
            durations.append(time.monotonic() - started)
            assert result.code == 0, result.stdout
    return durations


ARRIVAL_SECONDS = 4.0


def window_latency(
    binary: Path, root: Path, name: str, beads: int, settings: BeadsAutoDispatchArgs
) -> list[float]:
    """Beads assigned at random moments while one watch-window run polls; latency per bead.

    Server mode (bd against a dolt sql-server), as in production.
    """
    poll = float(settings.poll_interval_seconds)
    with dolt_server(binary, root / f"{name}-lat-dolt") as server:
        client = server.client_dir(root / f"{name}-lat-client")
        ids = [
            server.bd_run(client, "create", f"lat {i}", "--acceptance", "x", "--silent").strip()
            for i in range(beads)
        ]
        # The same arrivals for every preset, one every ARRIVAL_SECONDS on average: a bead's
        # wait, not a queue of beads waiting on each other's bd calls.
        spread = beads * ARRIVAL_SECONDS
        rng = random.Random(7)  # noqa: S311 (seeded workload, not a secret)
        offsets = sorted(rng.uniform(2.0, spread) for _ in ids)
        assigned: dict[str, float] = {}
        with AgentSimulator(capacity=1000, run_seconds=0.5) as agent:
            env = server_job_env(
                server,
                root,
                f"{name}-lat",
                agent.url,
                # Room for a loaded machine's slow assigns; SIGTERM ends it once all went.
                DISPATCHER_WINDOW_SECONDS=str(int(3 * spread + 10 * poll + 120)),
                AGENT_HEALTH_URL=f"{agent.url}/health",
                MAX_IN_FLIGHT="1000",
                **poll_env(settings),
            )
            process = start_jobs(["dispatch"], env)
            begin = time.monotonic()
            for bead, offset in zip(ids, offsets, strict=True):
                time.sleep(max(0.0, begin + offset - time.monotonic()))
                assigned[bead] = time.monotonic()  # before the call: the conservative end
                server.bd_run(client, "update", bead, "--assignee", "agent")
            deadline = time.monotonic() + 10 * poll + 60
            while len(agent.dispatched_at()) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            stdout, _ = process.communicate(timeout=120)
            dispatched = agent.dispatched_at()
    missing = [b for b in ids if b not in dispatched]
    assert not missing, f"never dispatched: {missing}; the run's last lines: {stdout[-2000:]}"
    return [dispatched[b] - assigned[b] for b in ids]


# -- 3. utilisation ---------------------------------------------------------------------


def utilisation(
    binary: Path,
    root: Path,
    name: str,
    slots: int,
    run_seconds: float,
    window: float,
    settings: BeadsAutoDispatchArgs,
    use_health: bool,
) -> dict[str, Any]:
    """A backlog bigger than the window can drain; bd in server mode, as in production."""
    with dolt_server(binary, root / f"{name}-dolt") as server:
        client = server.client_dir(root / f"{name}-client")
        for index in range(slots * int(window / run_seconds + 2)):
            server.bd_run(
                client,
                "create",
                f"{name} {index}",
                "--assignee",
                "agent",
                "--acceptance",
                "x",
                "--silent",
            )
        with AgentSimulator(capacity=slots, run_seconds=run_seconds) as agent:
            extra = {"DISPATCHER_WINDOW_SECONDS": str(int(window)), **poll_env(settings)}
            if use_health:
                extra |= {"AGENT_HEALTH_URL": f"{agent.url}/health", "MAX_IN_FLIGHT": str(slots)}
            process = start_jobs(
                ["dispatch"], server_job_env(server, root, name, agent.url, **extra)
            )
            start = time.monotonic()
            stdout, _ = process.communicate(timeout=window + 300)
            end = time.monotonic()
            busy = agent.busy_slot_seconds(start, end)
            refused = agent.refused
            gaps = agent.refill_gaps()
    return {
        "utilisation": busy / (slots * (end - start)),
        "seconds": end - start,
        "dispatched": float(len(summary(stdout).get("dispatched", []))),
        "refused": float(refused),
        "gaps": gaps,
    }


def utilisation_single_and_ten(
    binary: Path,
    root: Path,
    preset: str,
    run_seconds: float,
    window: float,
    settings: BeadsAutoDispatchArgs,
) -> dict[str, dict[str, Any]]:
    """One slot (BeadBoard's busy flag) and ten (agentHealthUrl), side by side."""
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, slots: int, health: bool) -> None:
        results[name] = utilisation(
            binary, root, f"{preset}-{name}", slots, run_seconds, window, settings, health
        )

    threads = [
        threading.Thread(target=run, args=("single", 1, False)),
        threading.Thread(target=run, args=("ten", 10, True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- 5. load ---------------------------------------------------------------------------


def write_load_jsonl(path: Path, total: int, agent: int) -> None:
    """A database's worth of beads; `agent` of them assigned to the agent, mixed states."""
    rng = random.Random(5)  # noqa: S311 (seeded workload, not a secret)
    now = time.time()
    statuses = ["open", "open", "in_progress", "blocked", "closed"]

    def stamp(seconds_ago: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - seconds_ago))

    with path.open("w") as out:
        for index in range(total):
            status = rng.choice(statuses)
            row: dict[str, Any] = {
                "id": f"srv-load{index:05d}",
                "title": f"load bead {index}",
                "status": status,
                "priority": rng.randint(0, 4),
                "issue_type": "task",
                "assignee": "agent" if index < agent else rng.choice(["alice", "bob", ""]),
                "created_at": stamp(rng.uniform(0, 90 * 86400)),
                "updated_at": stamp(rng.uniform(0, 6000)),
            }
            if rng.random() < 0.7:
                row["acceptance_criteria"] = "it works"
            if status == "closed":
                row["closed_at"] = row["updated_at"]
            out.write(json.dumps(row) + "\n")


def load(binary: Path, root: Path, total: int, agent: int) -> dict[str, Any]:
    """Production's shape: bd in server mode against a dolt sql-server, ticks as the pod runs."""
    source = root / "load.jsonl"
    write_load_jsonl(source, total, agent)
    with dolt_server(binary, root / "load-dolt") as server:
        client = server.client_dir(root / "load-client")
        started = time.monotonic()
        server.bd_run(client, "import", str(source), timeout=3600)
        imported = time.monotonic() - started

        def agent_beads(status: str) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = json.loads(
                server.bd_run(
                    client, "query", f"assignee=agent AND status={status}", "--limit", "0", "--json"
                )
            )
            return rows

        figures: dict[str, Any] = {
            "import_s": imported,
            "in_progress": len(agent_beads("in_progress")),
            "eligible": sum(
                1 for b in agent_beads("open") if str(b.get("acceptance_criteria", "")).strip()
            ),
        }
        with AgentSimulator(capacity=10, run_seconds=60) as agent_sim:
            for job, extra in (
                (
                    "dispatch",
                    {"AGENT_HEALTH_URL": f"{agent_sim.url}/health", "MAX_IN_FLIGHT": "10"},
                ),
                ("reap", {}),
            ):
                env = server_job_env(server, root, f"load-{job}", agent_sim.url, **extra)
                started = time.monotonic()
                result = run_jobs([job], env, timeout=1800)
                done = result.summary
                python_mib, child_mib = peak_rss_mib(done)
                figures[job] = {
                    "seconds": time.monotonic() - started,
                    "exit": result.code,
                    "python_mib": python_mib,
                    "child_mib": child_mib,
                    "bd_calls": done["bd_calls"],
                    "acted": len(done.get("dispatched", done.get("blocked", []))),
                }
    return figures
