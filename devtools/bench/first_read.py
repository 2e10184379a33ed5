"""The first read of a poll: `bd ready` (now) against `bd query` (before), on the same data.

An idle poll is that one read, so its cost is the idle poll's cost. Two databases: an empty
queue (embedded, as the idle-poll row), and 10,000 beads with dependencies, deferrals and
epics behind a dolt sql-server (production's shape), read for an assignee with no bead (the
idle poll there) and for the agent's queue.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.localservices.bd import RealBd
from devtools.localservices.dolt import dolt_server

QUERY = "bd query"
READY = "bd ready"


def reads(assignee: str) -> dict[str, list[str]]:
    """What BdClient runs (jobs/beads.py) for `assignee`, after `--db DIR --actor agent --json`."""
    return {
        QUERY: ["query", f'assignee="{assignee}" AND status=open', "--limit", "0"],
        READY: ["ready", "--assignee", assignee, "--limit", "0", "--sort", "priority"],
    }


READS = reads("agent")
# An assignee with no bead: the idle poll of a busy database, where bd ready still computes
# the blocked set over every bead while its answer is empty.
IDLE_READS = reads("nobody")
RUNS = 9  # alternating, so drift in the machine's load hits both alike
TARGET_RATIO = 1.5


def _timed(command: list[str], env: Mapping[str, str]) -> tuple[float, float]:
    """Wall ms and peak RSS MiB of one bd process (its own rusage, from wait4)."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-6:])} exited {process.returncode}")
    json.loads(output)  # the read must have printed JSON
    return 1000 * (time.monotonic() - started), usage.ru_maxrss / 1024


def compare(
    prefix: list[str], env: Mapping[str, str], reads: Mapping[str, list[str]] = READS
) -> dict[str, tuple[float, float]]:
    """Median wall ms and largest peak RSS MiB of each read, over RUNS alternating runs."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in reads}
    for _ in range(RUNS):
        for name, args in reads.items():
            samples[name].append(_timed([*prefix, "--actor", "agent", "--json", *args], env))
    return {
        name: (statistics.median(ms for ms, _ in runs), max(rss for _, rss in runs))
        for name, runs in samples.items()
    }


def empty_queue(binary: Path, root: Path) -> dict[str, tuple[float, float]]:
    bd = RealBd(binary, root / "first-read-empty").init(prefix="empty")
    bd.create_many([{"title": f"human {i}", "assignee": "alice"} for i in range(200)])
    return compare([str(binary), "--db", str(bd.beads_dir)], bd.env())


def graph_jsonl(path: Path, total: int, agent: int) -> None:
    """`total` beads, `agent` of them the agent's: a third wait on another bead, a tenth are
    deferred, and epics (some blocked) hold children."""
    rng = random.Random(15)  # noqa: S311 (seeded workload, not a secret)
    now = time.time()

    def stamp(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

    with path.open("w") as out:
        for index in range(total):
            bead_id = f"graph-{index:05d}"
            epic = index % 50 == 0
            row: dict[str, Any] = {
                "id": bead_id,
                "title": f"graph bead {index}",
                "status": rng.choice(["open", "open", "open", "in_progress", "closed"]),
                "priority": rng.randint(0, 4),
                "issue_type": "epic" if epic else "task",
                "assignee": "agent" if index < agent else rng.choice(["alice", "bob", ""]),
                "acceptance_criteria": "it works",
                "created_at": stamp(now - rng.uniform(0, 90 * 86400)),
                "updated_at": stamp(now - rng.uniform(0, 6000)),
            }
            if row["status"] == "closed":
                row["closed_at"] = row["updated_at"]
            if rng.random() < 0.1:
                row["defer_until"] = stamp(now + 7200)
            dependencies = []
            if index and rng.random() < 0.33:
                on = f"graph-{rng.randrange(index):05d}"
                dependencies.append({"issue_id": bead_id, "depends_on_id": on, "type": "blocks"})
            if not epic and index >= 50:
                parent = f"graph-{(index // 50) * 50 - 50:05d}"
                dependencies.append(
                    {"issue_id": bead_id, "depends_on_id": parent, "type": "parent-child"}
                )
            if dependencies:
                row["dependencies"] = dependencies
            out.write(json.dumps(row) + "\n")


def large_graph(binary: Path, root: Path, total: int, agent: int) -> dict[str, Any]:
    source = root / "first-read-graph.jsonl"
    graph_jsonl(source, total, agent)
    with dolt_server(binary, root / "first-read-dolt") as server:
        client = server.client_dir(root / "first-read-client")
        server.bd_run(client, "import", str(source), timeout=3600)
        prefix = [str(binary), "--db", str(client)]
        figures: dict[str, Any] = compare(prefix, server.bd_env())
        figures["idle"] = compare(prefix, server.bd_env(), IDLE_READS)
        ready = json.loads(server.bd_run(client, "--json", *READS[READY]))
        queued = json.loads(server.bd_run(client, "--json", *READS[QUERY]))
        figures["offered"] = (len(ready), len(queued))
    return figures


def rows(name: str, figures: Mapping[str, tuple[float, float]]) -> list[list[str]]:
    """The idle poll as it was and is (one bd query), bd ready alone (a first read that asked
    it on every poll), and a poll whose beads all wait (query, then ready)."""
    query_ms, query_rss = figures[QUERY]
    ready_ms, ready_rss = figures[READY]
    both_ms = query_ms + ready_ms

    def ratio(ms: float) -> str:
        return f"{ms / query_ms:.2f}x"

    return [
        [
            name,
            f"{QUERY}: idle poll, before and now",
            f"{query_ms:.0f}",
            "1.00x",
            f"{query_rss:.0f}",
        ],
        [
            name,
            f"{READY} alone (a ready-first read)",
            f"{ready_ms:.0f}",
            ratio(ready_ms),
            f"{ready_rss:.0f}",
        ],
        [
            name,
            f"{QUERY} + {READY}: a poll with beads queued (sum)",
            f"{both_ms:.0f}",
            ratio(both_ms),
            f"{max(query_rss, ready_rss):.0f}",
        ],
    ]
