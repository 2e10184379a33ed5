"""`make bench`: the original configuration and ours side by side, real bd, loopback agent.

Prints one table per question: pods per day, assign->dispatch latency, agent utilisation
under a backlog, and the cost of an idle poll. Nothing here is a pass/fail test; the
targets are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.auto_dispatch import DISPATCHER_NAME, REAPER_NAME
from components.cron import parse_schedule
from jobs.lock import LOCK_BEAD_ID, LOCK_TITLE
from tests.bench.agent_sim import AgentSimulator
from tests.conftest import JobRun, base_env, run_jobs
from tests.pulumi_harness import render_program
from tests.realbd import RealBd

ROOT = Path(__file__).resolve().parents[2]

# Stack config of each preset (what `pulumi config set` would hold).
PRESETS: dict[str, dict[str, str]] = {
    "original": {
        "dispatcherSchedule": "*/2 * * * *",
        "reaperSchedule": "*/10 * * * *",
        "dispatcherWindowSeconds": "0",
    },
    "low-churn": {
        "dispatcherSchedule": "*/30 * * * *",
        "dispatcherWindowSeconds": "1740",
        "dispatcherDeadlineSeconds": "1780",
        "pollIntervalSeconds": "10",
        "reaperSchedule": "5 * * * *",
    },
}
LOW_CHURN_POLL = 10.0
LOW_CHURN_PERIOD = 1800.0
LOW_CHURN_WINDOW = 1740.0


@dataclass
class Row:
    cells: list[str]


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = [f"\n### {title}\n"]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- fixtures ---------------------------------------------------------------------------


def fresh_db(binary: Path, root: Path, name: str) -> RealBd:
    bd = RealBd(binary, root / name).init(prefix=name[:6])
    bd.run(
        "create",
        LOCK_TITLE,
        "--id",
        LOCK_BEAD_ID,
        "--force",
        "--type",
        "chore",
        "--priority",
        "4",
        "--silent",
    )
    bd.update(LOCK_BEAD_ID, "--status", "closed")
    return bd


def job_env(bd: RealBd, url: str, **extra: str) -> dict[str, str]:
    return base_env(
        **bd.env(), BD_BIN=str(bd.binary), BEADS_DB=str(bd.beads_dir), BEADBOARD_URL=url, **extra
    )


def start_job(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", "dispatch"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def summary(stdout: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    done = [line for line in lines if line.get("event") == "tick.done"]
    return done[-1] if done else {}


# -- 1. pods per day --------------------------------------------------------------------


def pods_per_day() -> tuple[str, dict[str, int]]:
    rows, totals = [], {}
    for name, config in PRESETS.items():
        rendered = render_program(config)
        dispatcher = rendered.cronjob(DISPATCHER_NAME)["spec"]["schedule"]
        reaper = rendered.cronjob(REAPER_NAME)["spec"]["schedule"]
        d, r = parse_schedule(dispatcher).runs_per_day(), parse_schedule(reaper).runs_per_day()
        totals[name] = d + r
        window = config.get("dispatcherWindowSeconds", "0")
        rows.append(
            [
                name,
                f"`{dispatcher}` (window {window} s)",
                f"`{reaper}`",
                str(d),
                str(r),
                str(d + r),
                "≤ 100" if name != "original" else "(864)",
            ]
        )
    return table(
        "Pod creations per day (from the rendered CronJob schedules)",
        ["preset", "dispatcher", "reaper", "dispatcher pods", "reaper pods", "pods/day", "target"],
        rows,
    ), totals


# -- 2. latency -------------------------------------------------------------------------


def measure_original_tick(binary: Path, root: Path, rounds: int = 5) -> list[float]:
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


def measure_window_latency(binary: Path, root: Path, beads: int, poll: float) -> list[float]:
    """Beads assigned at random moments while one watch-window run polls; latency per bead."""
    bd = fresh_db(binary, root, "lat")
    ids = [bd.create(f"lat {i}", acceptance="x") for i in range(beads)]
    spread = max(30.0, beads * poll / 5)
    rng = random.Random(7)
    offsets = sorted(rng.uniform(2.0, spread) for _ in ids)
    assigned: dict[str, float] = {}
    with AgentSimulator(capacity=1000, run_seconds=0.5) as agent:
        env = job_env(
            bd,
            agent.url,
            DISPATCH_WINDOW_SECONDS=str(int(spread + 4 * poll)),
            POLL_INTERVAL_SECONDS=str(poll),
            AGENT_HEALTH_URL=f"{agent.url}/health",
            MAX_IN_FLIGHT="1000",
        )
        process = start_job(env)
        begin = time.monotonic()
        for bead, offset in zip(ids, offsets, strict=True):
            time.sleep(max(0.0, begin + offset - time.monotonic()))
            assigned[bead] = time.monotonic()  # before the call: the conservative end
            bd.update(bead, "--assignee", "agent")
        process.communicate(timeout=spread + 10 * poll + 120)
        dispatched = agent.dispatched_at()
    missing = [b for b in ids if b not in dispatched]
    assert not missing, f"never dispatched: {missing}"
    return [dispatched[b] - assigned[b] for b in ids]


def end_to_end(
    in_window: list[float], period: float, window: float, first_poll: float
) -> list[float]:
    """Add the schedule: an assignment between two windows waits for the next run."""
    rng = random.Random(11)
    samples = []
    for _ in range(20000):
        moment = rng.uniform(0, period)
        pick = rng.choice(in_window)
        samples.append(pick if moment < window else (period - moment) + first_poll)
    return samples


# -- 3. utilisation ---------------------------------------------------------------------


def measure_utilisation(
    binary: Path,
    root: Path,
    name: str,
    slots: int,
    run_seconds: float,
    window: float,
    poll: float,
    use_health: bool,
) -> dict[str, float]:
    bd = fresh_db(binary, root, name)
    backlog = slots * int(window / run_seconds + 2)
    for index in range(backlog):
        bd.create(f"{name} {index}", assignee="agent", acceptance="x", priority=2)
    with AgentSimulator(capacity=slots, run_seconds=run_seconds) as agent:
        extra = {"DISPATCH_WINDOW_SECONDS": str(int(window)), "POLL_INTERVAL_SECONDS": str(poll)}
        if use_health:
            extra |= {"AGENT_HEALTH_URL": f"{agent.url}/health", "MAX_IN_FLIGHT": str(slots)}
        process = start_job(job_env(bd, agent.url, **extra))
        start = time.monotonic()
        stdout, _ = process.communicate(timeout=window + 300)
        end = time.monotonic()
        busy = agent.busy_slot_seconds(start, end)
        refused = agent.refused
    return {
        "utilisation": busy / (slots * (end - start)),
        "seconds": end - start,
        "dispatched": float(len(summary(stdout).get("dispatched", []))),
        "refused": float(refused),
    }


def original_utilisation(slots: int, run_seconds_real: float) -> float:
    # One dispatch per 120 s tick, whatever the number of slots.
    return min(1.0, run_seconds_real / 120.0) / slots


# -- 4. idle poll cost ------------------------------------------------------------------


def measure_idle(binary: Path, root: Path, background_beads: int) -> dict[str, float]:
    bd = fresh_db(binary, root, "idle")
    for index in range(background_beads):
        bd.create(f"human {index}", assignee="alice", acceptance="x")
    with AgentSimulator(capacity=1, run_seconds=1) as agent:
        started = time.monotonic()
        result: JobRun = run_jobs(
            ["dispatch"],
            job_env(bd, agent.url, DISPATCH_WINDOW_SECONDS="10", POLL_INTERVAL_SECONDS="1"),
        )
        elapsed = time.monotonic() - started
        requests = len(agent.stub.requests)
    done = result.summary
    polls = float(done["polls"])
    # Wall time per poll = time spent not sleeping, divided by the polls.
    busy = elapsed - (polls - 1) * 1.0
    return {
        "polls": polls,
        "bd_per_poll": done["bd_calls"] / polls,
        "http_per_poll": requests / polls,
        "ms_per_poll": 1000 * busy / polls,
        "peak_rss": done["peak_rss_mib"],
        "bd_peak_rss": done["bd_peak_rss_mib"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--bd", required=True, help="the real bd binary")
    parser.add_argument("--beads", type=int, default=50, help="beads for the latency run")
    parser.add_argument(
        "--scale",
        type=float,
        default=10.0,
        help="time scale for agent runs and the utilisation poll (10 = 1:10)",
    )
    parser.add_argument(
        "--agent-minutes",
        type=float,
        default=10.0,
        help="length of one agent run in real minutes (scaled down)",
    )
    parser.add_argument(
        "--window", type=float, default=240.0, help="scaled seconds of the utilisation windows"
    )
    args = parser.parse_args()
    binary = Path(args.bd)
    bd_version = subprocess.run(
        [str(binary), "version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    out: list[str] = [
        "## make bench",
        f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, bd {bd_version}",
    ]
    with tempfile.TemporaryDirectory(prefix="beads-bench-") as tmp:
        root = Path(tmp)
        text, _ = pods_per_day()
        out.append(text)
        print("\n".join(out), flush=True)

        ticks = measure_original_tick(binary, root)
        tick = statistics.median(ticks)
        latencies = measure_window_latency(binary, root, args.beads, LOW_CHURN_POLL)
        e2e = end_to_end(latencies, LOW_CHURN_PERIOD, LOW_CHURN_WINDOW, LOW_CHURN_POLL / 2 + tick)
        rng = random.Random(3)
        orig_wait = [rng.uniform(0, 120) + tick for _ in range(20000)]
        rows = [
            [
                "original (`*/2`, one pass)",
                "schedule + measured pass",
                f"{percentile(orig_wait, 0.5):.1f}",
                f"{percentile(orig_wait, 0.95):.1f}",
                "—",
            ],
            [
                f"low-churn, inside a window (poll {LOW_CHURN_POLL:g} s)",
                f"measured, {len(latencies)} beads",
                f"{percentile(latencies, 0.5):.1f}",
                f"{percentile(latencies, 0.95):.1f}",
                f"≤ {2 * LOW_CHURN_POLL:g}",
            ],
            [
                "low-churn, incl. the 60 s gap between windows",
                "measured + schedule",
                f"{percentile(e2e, 0.5):.1f}",
                f"{percentile(e2e, 0.95):.1f}",
                f"≤ {2 * LOW_CHURN_POLL:g}",
            ],
        ]
        block = table(
            "Assign → dispatch latency, seconds (pod start time not included)",
            ["configuration", "how", "p50", "p95", "target p95"],
            rows,
        )
        block += f"\n\n(one original pass with real bd: median {tick:.2f} s over {len(ticks)} runs)"
        print(block, flush=True)
        out.append(block)

        run_s = args.agent_minutes * 60 / args.scale
        poll_s = LOW_CHURN_POLL / args.scale
        results: dict[str, dict[str, float]] = {}

        def run(name: str, slots: int, health: bool) -> None:
            results[name] = measure_utilisation(
                binary, root, name, slots, run_s, args.window, poll_s, health
            )

        threads = [
            threading.Thread(target=run, args=("single", 1, False)),
            threading.Thread(target=run, args=("ten", 10, True)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows = [
            [
                "original, 1 slot",
                "computed: 1 dispatch / 120 s tick",
                f"{100 * original_utilisation(1, args.agent_minutes * 60):.1f} %",
                "—",
                "—",
            ],
            [
                "original, 10 slots",
                "computed: 1 dispatch / 120 s tick",
                f"{100 * original_utilisation(10, args.agent_minutes * 60):.1f} %",
                "—",
                "—",
            ],
            [
                "ours, 1 slot (BeadBoard busy flag)",
                f"measured, {results['single']['seconds']:.0f} s",
                f"{100 * results['single']['utilisation']:.1f} %",
                f"{results['single']['dispatched']:.0f}",
                "≥ 95 %",
            ],
            [
                "ours, 10 slots (agentHealthUrl)",
                f"measured, {results['ten']['seconds']:.0f} s",
                f"{100 * results['ten']['utilisation']:.1f} %",
                f"{results['ten']['dispatched']:.0f}",
                "≥ 95 %",
            ],
        ]
        block = table(
            f"Agent utilisation under a backlog (busy slot-time / available slot-time; agent run "
            f"{args.agent_minutes:g} min and poll {LOW_CHURN_POLL:g} s scaled 1:{args.scale:g} "
            f"→ {run_s:g} s and {poll_s:g} s; bd and HTTP not scaled)",
            ["configuration", "how", "utilisation", "dispatched", "target"],
            rows,
        )
        print(block, flush=True)
        out.append(block)

        idle = measure_idle(binary, root, background_beads=200)
        rows = [
            [
                "low-churn idle poll (200 other beads in the db)",
                f"{idle['bd_per_poll']:.2f}",
                f"{idle['http_per_poll']:.2f}",
                f"{idle['ms_per_poll']:.0f}",
                f"{idle['peak_rss']:.0f} / {idle['bd_peak_rss']:.0f}",
            ]
        ]
        block = table(
            "Cost of an idle poll (measured over a 10 s window, 1 s poll)",
            [
                "what",
                "bd calls / poll",
                "HTTP requests / poll",
                "wall ms / poll",
                "peak RSS MiB (python / bd)",
            ],
            rows,
        )
        block += "\n\ntargets: 1 bd call and 0 HTTP requests per idle poll"
        print(block, flush=True)
        out.append(block)
    report = ROOT / "build" / "bench.md"
    report.parent.mkdir(exist_ok=True)
    report.write_text("\n".join(out) + "\n")
    print(f"\n(written to {report.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
