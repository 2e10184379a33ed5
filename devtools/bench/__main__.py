"""`make bench`: the original configuration, the one before the change detector, and ours
side by side, real bd, loopback agent.

Prints one table per question: pods per day, assign->dispatch latency, agent utilisation
under a backlog, the cost of an idle poll and of a poll's first read (bd ready against bd
query), the load of a big database. Nothing here is a pass/fail test; the targets are
printed beside the figures. The measurements are in measure.py (and first_read.py), the
tables in report.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from components.config import settings_from
from devtools.bench import first_read, idle, measure, report
from devtools.paths import ROOT

# The production preset before the change detector (issue 19): a bd process every poll, so
# a 10 s poll, and half-hour windows. Kept to measure against, in the same run.
BEFORE_DETECTOR = {
    "dispatcherSchedule": "*/30 * * * *",
    "dispatcherWindowSeconds": "1740",
    "dispatcherDeadlineSeconds": "1780",
    "pollIntervalSeconds": "10",
    "changeDetection": "false",
}
ORIGINAL, BEFORE, LOW_CHURN = "original", "before", "low-churn"
# Seconds of the idle windows measured: a few polls at 10 s, twenty at 1 s.
IDLE_WINDOW = {BEFORE: 40, LOW_CHURN: 20}


def presets(stack_file: Path) -> dict[str, dict[str, str]]:
    """The configurations compared: "original" is the program's defaults (the Terraform
    version's schedules, one pass per pod); "low-churn" is whatever the production stack
    holds, so the README's figures follow it; "before" is that stack as it was before the
    change detector."""
    stack = yaml.safe_load(stack_file.read_text())["config"]
    low_churn = {
        key.split(":", 1)[1]: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in stack.items()
        if key.startswith("beads-autodispatch:")
    }
    return {ORIGINAL: {}, BEFORE: low_churn | BEFORE_DETECTOR, LOW_CHURN: low_churn}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--bd", required=True, help="the real bd binary")
    parser.add_argument("--beads", type=int, default=40, help="beads for the latency run")
    parser.add_argument(
        "--scale",
        type=float,
        default=10.0,
        help="time scale for agent runs in the utilisation section (10 = 1:10)",
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
    parser.add_argument("--load-beads", type=int, default=10000, help="beads in the load db")
    parser.add_argument("--load-agent", type=int, default=500, help="of which assigned to agent")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["latency", "utilisation", "idle", "first-read", "load"],
        help="sections to leave out",
    )
    return parser.parse_args()


def main() -> int:
    args = arguments()
    configs = presets(ROOT / "Pulumi.prod.yaml")
    compared = {name: settings_from(configs[name]) for name in (BEFORE, LOW_CHURN)}
    binary = Path(args.bd)
    bd_version = subprocess.run(
        [str(binary), "version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    out: list[str] = [
        "## make bench",
        f"machine: {platform.machine()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, bd {bd_version}",
    ]

    def emit(block: str) -> None:
        print(block, flush=True)
        out.append(block)

    print(out[0] + "\n" + out[1], flush=True)
    with tempfile.TemporaryDirectory(prefix="beads-bench-") as tmp:
        root = Path(tmp)
        emit(report.pods_per_day(measure.schedules(configs)))
        original_pass = statistics.median(measure.original_tick(binary, root))
        if "latency" not in args.skip:
            latencies = {
                name: measure.window_latency(binary, root, name, args.beads, settings)
                for name, settings in compared.items()
            }
            emit(report.latency(latencies, compared, original_pass))
        if "utilisation" not in args.skip:
            run_seconds = args.agent_minutes * 60 / args.scale
            results = {
                name: measure.utilisation_single_and_ten(
                    binary, root, name, run_seconds, args.window, settings
                )
                for name, settings in compared.items()
            }
            emit(
                report.utilisation(
                    results,
                    compared,
                    agent_minutes=args.agent_minutes,
                    scale=args.scale,
                    original_pass=original_pass,
                )
            )
        if "idle" not in args.skip:
            others = 200
            figures = {
                name: idle.idle_server(binary, root, name, settings, IDLE_WINDOW[name], others)
                for name, settings in compared.items()
            }
            embedded = idle.idle_embedded(
                binary, root, compared[LOW_CHURN], IDLE_WINDOW[LOW_CHURN], others
            )
            emit(report.idle(figures, embedded, compared, others))
        if "first-read" not in args.skip:
            empty = first_read.empty_queue(binary, root)
            graph = first_read.large_graph(binary, root, args.load_beads, args.load_agent)
            emit(report.first_read_table(empty, graph, args.load_beads))
        if "load" not in args.skip:
            figures = measure.load(binary, root, args.load_beads, args.load_agent)
            prod_deadline = compared[LOW_CHURN].dispatcher_deadline_seconds
            emit(report.load(figures, args.load_beads, args.load_agent, prod_deadline))
    written = ROOT / "build" / "bench.md"
    written.parent.mkdir(exist_ok=True)
    written.write_text("\n".join(out) + "\n")
    print(f"\n(written to {written.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
