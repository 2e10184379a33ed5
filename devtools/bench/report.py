"""The bench's tables: measured figures (measure.py) beside their targets, as Markdown."""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping
from typing import Any

from components.config import BeadsAutoDispatchArgs
from devtools.bench import first_read

# Issue 19's targets, for the production preset ("low-churn").
PODS_PER_DAY_TARGET = 48
LATENCY_P95_IN_WINDOW = 3.0
LATENCY_P95_WITH_GAPS = 5.0
REFILL_GAP_TARGET = 2.0
UTILISATION_TARGET = 0.995
IDLE_POLL_MS_TARGET = 5.0
IDLE_RSS_MIB_TARGET = 100.0
LOW_CHURN = "low-churn"
LABELS = {"before": "before the detector", LOW_CHURN: "low-churn (ours)"}


def mark(ok: bool) -> str:
    return "✓" if ok else "✗ MISSED"


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


def _p50_p95(values: list[float]) -> list[str]:
    return [f"{percentile(values, 0.5):.1f}", f"{percentile(values, 0.95):.1f}"]


def pods_per_day(schedules: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name, s in schedules.items():
        total = s["dispatcher_runs"] + s["reaper_runs"]
        rows.append(
            [
                name,
                f"`{s['dispatcher']}` (window {s['window']} s)",
                f"`{s['reaper']}`",
                str(s["dispatcher_runs"]),
                str(s["reaper_runs"]),
                str(total),
                f"≤ {PODS_PER_DAY_TARGET} {mark(total <= PODS_PER_DAY_TARGET)}"
                if name == LOW_CHURN
                else "—",
            ]
        )
    return table(
        "Pod creations per day (from the rendered CronJob schedules)",
        ["preset", "dispatcher", "reaper", "dispatcher pods", "reaper pods", "pods/day", "target"],
        rows,
    )


def end_to_end(
    in_window: list[float], period: float, window: float, first_poll: float
) -> list[float]:
    """Add the schedule: an assignment between two windows waits for the next run."""
    rng = random.Random(11)  # noqa: S311 (seeded workload, not a secret)
    samples = []
    for _ in range(20000):
        moment = rng.uniform(0, period)
        pick = rng.choice(in_window)
        samples.append(pick if moment < window else (period - moment) + first_poll)
    return samples


def latency(
    latencies: Mapping[str, list[float]], presets: Mapping[str, BeadsAutoDispatchArgs], tick: float
) -> str:
    rng = random.Random(3)  # noqa: S311 (seeded workload, not a secret)
    original = [rng.uniform(0, 120) + tick for _ in range(20000)]
    rows = [["original (`*/2`, one pass)", "schedule + measured pass", *_p50_p95(original), "—"]]
    for name, measured in latencies.items():
        settings = presets[name]
        poll = float(settings.poll_interval_seconds)
        period = float(settings.dispatcher_interval_seconds)
        window = float(settings.dispatcher_window_seconds)
        e2e = end_to_end(measured, period, window, poll / 2 + tick)
        ours = name == LOW_CHURN

        def target(values: list[float], limit: float, ours: bool = ours) -> str:
            return f"≤ {limit:g} {mark(percentile(values, 0.95) <= limit)}" if ours else "—"

        rows += [
            [
                f"{LABELS[name]}, inside a window (poll {poll:g} s)",
                f"measured, {len(measured)} beads",
                *_p50_p95(measured),
                target(measured, LATENCY_P95_IN_WINDOW),
            ],
            [
                f"{LABELS[name]}, incl. the {period - window:g} s gap between windows",
                "measured + schedule",
                *_p50_p95(e2e),
                target(e2e, LATENCY_P95_WITH_GAPS),
            ],
        ]
    block = table(
        "Assign → dispatch latency, seconds (bd in server mode; pod start not included)",
        ["configuration", "how", "p50", "p95", "target p95"],
        rows,
    )
    return block + f"\n\n(one original pass with real bd: median {tick:.2f} s)"


def original_utilisation(slots: int, run_seconds_real: float, tick_seconds: float) -> float:
    """The original dispatches at most one bead per 120 s tick.

    One slot: a freed slot waits for the next tick (60 s on average) plus the pass itself.
    More slots: one start per tick keeps run/120 slots busy in the steady state.
    """
    if slots == 1:
        return run_seconds_real / (run_seconds_real + 60.0 + tick_seconds)
    return min(1.0, run_seconds_real / 120.0 / slots)


def utilisation(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    presets: Mapping[str, BeadsAutoDispatchArgs],
    *,
    agent_minutes: float,
    scale: float,
    original_pass: float,
) -> str:
    """Utilisation from the measured time a freed slot waits, for real-length agent runs.

    Agent runs are scaled down (1:scale) so a window holds several of them; the poll keeps
    its real interval, so each refill gap is what production sees. A slot then cycles
    run + gap, and utilisation = run / (run + gap) for the real run length. Judged on the
    slowest refill measured, so a lucky median cannot carry the target.
    """
    real_run = agent_minutes * 60
    rows = []
    for slots in (1, 10):
        computed = original_utilisation(slots, real_run, original_pass)
        rows.append(
            [
                f"original, {slots} slot{'s' if slots > 1 else ''}",
                f"computed: ≤ 1 dispatch per 120 s tick, measured pass {original_pass:.2f} s",
                "—",
                f"{100 * computed:.1f} %",
                "—",
            ]
        )
    for preset, measured in results.items():
        poll = presets[preset].poll_interval_seconds
        for name, label in (
            ("single", "1 slot (BeadBoard busy flag)"),
            ("ten", "10 slots (`agentHealthUrl`)"),
        ):
            rows.append(
                _utilisation_row(preset, f"{label}, poll {poll} s", measured[name], real_run)
            )
    return table(
        f"Agent utilisation under a backlog, for {agent_minutes:g}-minute agent runs: "
        f"run / (run + refill gap). Gaps measured with bd in server mode, each preset's "
        f"real poll and agent runs scaled 1:{scale:g} ({real_run / scale:g} s)",
        ["configuration", "how", "refill gap s (median / max)", "utilisation", "target"],
        rows,
    )


def _utilisation_row(
    preset: str, label: str, measured: Mapping[str, Any], real_run: float
) -> list[str]:
    name = f"{LABELS[preset]}, {label}"
    gaps = measured["gaps"]
    if not gaps:
        return [name, "no slot freed in the window", "—", "—", mark(False)]
    median, worst_gap = statistics.median(gaps), max(gaps)
    worst = real_run / (real_run + worst_gap)
    met = worst_gap <= REFILL_GAP_TARGET and worst >= UTILISATION_TARGET
    target = (
        f"gap ≤ {REFILL_GAP_TARGET:g} s, ≥ {100 * UTILISATION_TARGET:g} % {mark(met)}"
        if preset == LOW_CHURN
        else "—"
    )
    return [
        name,
        f"measured: {len(gaps)} refills, {measured['dispatched']:.0f} dispatched",
        f"{median:.1f} / {worst_gap:.1f}",
        f"{100 * real_run / (real_run + median):.2f} % (slowest refill: {100 * worst:.2f} %)",
        target,
    ]


def idle(
    figures: Mapping[str, Mapping[str, Any]],
    embedded: Mapping[str, Any],
    presets: Mapping[str, BeadsAutoDispatchArgs],
    others: int,
) -> str:
    rows = [
        _idle_row(f"{LABELS[name]}, server mode", f, presets[name], ours=name == LOW_CHURN)
        for name, f in figures.items()
    ]
    rows.append(_idle_row(f"{LABELS[LOW_CHURN]}, embedded", embedded, presets[LOW_CHURN], True))
    block = table(
        f"An idle watch window ({others} beads of a human in the database, none of the agent)",
        [
            "what",
            "polls",
            "bd processes",
            "HTTP requests",
            "wall ms / idle poll (median / p95 / max)",
            "peak RSS MiB python + bd",
            "target",
        ],
        rows,
    )
    return block + (
        "\n\nAn idle poll of ours is the change check alone (the first poll of a window "
        "reads with bd); before, every poll was one bd process. Wall ms from the dispatcher's "
        "own timing of each poll (`tick.done`). RSS: python's peak plus its largest child's "
        "(bd's, from the first poll's read; most of it is bd's binary mapped in, file-backed). "
        "Between bd reads the window is python alone."
    )


def _idle_row(
    what: str, f: Mapping[str, Any], settings: BeadsAutoDispatchArgs, ours: bool
) -> list[str]:
    if ours:
        median, p95, worst = f["quiet_ms"], f["quiet_ms_p95"], f["quiet_ms_max"]
        rss = f["python_mib"] + f["child_mib"]
        quiet = (
            f["bd_calls"] == 1
            and f["requests"] == 0
            and p95 is not None
            and p95 <= IDLE_POLL_MS_TARGET
        )
        target = (
            f"no bd after the first poll, 0 HTTP, p95 ≤ {IDLE_POLL_MS_TARGET:g} ms "
            f"{mark(quiet)}; ≤ {IDLE_RSS_MIB_TARGET:g} MiB {mark(rss <= IDLE_RSS_MIB_TARGET)}"
        )
        wall = "—" if median is None else f"{median:.2f} / {p95:.2f} / {worst:.2f}"
    else:
        wall, target = f"{f['poll_ms']:.0f} (one bd process)", "—"
    return [
        f"{what}, poll {settings.poll_interval_seconds} s ({f['signal']})",
        str(f["polls"]),
        str(f["bd_calls"]),
        str(f["requests"]),
        wall,
        f"{f['python_mib']:.0f} + {f['child_mib']:.0f} = {f['python_mib'] + f['child_mib']:.0f}",
        target,
    ]


def first_read_table(
    empty: Mapping[str, tuple[float, float]], graph: dict[str, Any], total: int
) -> str:
    offered, queued = graph.pop("offered")
    idle = graph.pop("idle")
    ready_ratio = idle[first_read.READY][0] / idle[first_read.QUERY][0]
    block = table(
        "The first read of a poll: bd query, then bd ready only when a queued bead could go "
        f"out (median of {first_read.RUNS} alternating runs each)",
        ["database", "read", "wall ms", "vs the idle poll", "peak RSS MiB"],
        [
            *first_read.rows("empty queue, 200 other beads (embedded)", empty),
            *first_read.rows(f"{total} beads with dependencies (server), queue empty", idle),
            *first_read.rows(f"{total} beads with dependencies (server), agent's queue", graph),
        ],
    )
    return (
        block + f"\n\nOf the {queued} open beads of the agent in the large database, bd ready "
        f"offers {offered}. An idle poll is the bd query it was (counted per poll above). On "
        f"the large database's empty queue bd ready alone takes {ready_ratio:.2f}x that query "
        f"(target for the idle poll: ≤ {first_read.TARGET_RATIO:g}x): it costs the same "
        "whatever the queue, so it is asked only when a queued bead has acceptance criteria."
    )


def load(figures: Mapping[str, Any], total: int, agent: int, prod_deadline: int) -> str:
    rows = []
    for job, deadline, seconds in (
        ("dispatch", f"100 s ({prod_deadline} s low-churn)", 100.0),
        ("reap", "300 s", 300.0),
    ):
        f = figures[job]
        rows.append(
            [
                f"{job} tick",
                f"{f['seconds']:.1f} s {mark(f['seconds'] < seconds)}",
                deadline,
                f"{f['python_mib']:.0f} + {f['child_mib']:.0f} MiB",
                f"256 MiB {mark(f['python_mib'] + f['child_mib'] < 256)}",
                str(f["bd_calls"]),
                str(f["acted"]),
                str(f["exit"]),
            ]
        )
    block = table(
        f"Load, server mode (dolt sql-server): {total} beads, {agent} assigned to agent "
        f"({figures['eligible']} eligible, "
        f"{figures['in_progress']} in progress; bd import took {figures['import_s']:.0f} s)",
        [
            "run",
            "wall",
            "activeDeadlineSeconds",
            "peak RSS python + largest child",
            "pod limit",
            "bd calls",
            "dispatched / blocked",
            "exit",
        ],
        rows,
    )
    return block + "\n\n(bd runs as a child of the python process: the pod peak is at most the sum)"
