"""`python3 -m jobs dispatch|reap [--dry-run]`: exit 0 ok, 1 failed run, 2 bad configuration.

`python3 -m jobs explain <bead-id>` prints why that bead is not going out (jobs/explain.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from jobs.beadboard import AgentHealth, BeadBoard
from jobs.beads import BdClient, BdError, BdRejected, resolve_bd_bin
from jobs.database import provision, resolve
from jobs.detect import ChangeDetector, signal_for
from jobs.dispatch import Dispatcher, RuntimeSwitch
from jobs.explain import Explainer
from jobs.lock import lock_on
from jobs.log import Clock, EventLog, new_run_id, utc_now
from jobs.protocol import ExitCode
from jobs.reap import Reaper
from jobs.run import RunContext
from jobs.settings import ConfigError, env_name, load_settings


def run_dispatch(context: RunContext) -> int:
    settings = context.settings
    health = (
        AgentHealth(settings.agent_health_url, settings.http_timeout_seconds)
        if settings.agent_health_url
        else None
    )
    switch = RuntimeSwitch(settings.dispatcher_enabled, settings.runtime_config_dir, context.log)
    # A one-pass run (window 0) reads with bd anyway, but the signal still spares it the
    # read under the lock when nothing was written since (~1 ms against two bd processes).
    signal = signal_for(context.lock) if settings.change_detection else None
    detector = ChangeDetector(signal, context.log, context.monotonic)
    try:
        with BeadBoard(settings.beadboard_url, settings.http_timeout_seconds) as board:
            return Dispatcher(context, board, load=health, switch=switch, detector=detector).run()
    finally:
        if health is not None:
            health.close()


def run_reap(context: RunContext) -> int:
    return Reaper(context).run()


JOBS: dict[str, Callable[[RunContext], int]] = {"dispatch": run_dispatch, "reap": run_reap}


EXPLAIN = "explain"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m jobs",
        description="Auto-dispatch beads assigned to the agent, or reap stuck ones; "
        "`explain <bead-id>` says why a bead is not going out.",
    )
    parser.add_argument("job", choices=[*sorted(JOBS), EXPLAIN], help="which job to run once")
    parser.add_argument("bead", nargs="?", help="with explain: the bead to explain")
    parser.add_argument(
        "--dry-run", action="store_true", help="decide and log, change no bead, dispatch nothing"
    )
    return parser


def run_explain(context: RunContext, bead_id: str, out: IO[str]) -> int:
    """Reads only: no lock, no write, no dispatch. Exit 2 for an id bd does not know."""
    settings = context.settings
    switch = RuntimeSwitch(settings.dispatcher_enabled, settings.runtime_config_dir, context.log)
    health = (
        AgentHealth(settings.agent_health_url, settings.http_timeout_seconds)
        if settings.agent_health_url
        else None
    )
    with BeadBoard(settings.beadboard_url, settings.http_timeout_seconds) as board:

        def free_slots() -> int:
            if health is None:
                return 0 if board.agent_busy() else 1
            return health.load().free_slots(settings.max_in_flight)

        assert isinstance(context.store, BdClient)  # explain reads what only bd can tell
        explainer = Explainer(settings, context.store, free_slots, switch.enabled(), context.clock)
        try:
            reasons = explainer.explain(bead_id)
        except BdRejected as exc:
            print(f"explain: bd does not know bead {bead_id!r} ({exc})", file=sys.stderr)
            return int(ExitCode.CONFIG)
        except BdError as exc:
            print(f"explain: {exc}", file=sys.stderr)
            return int(ExitCode.FAILED)
        finally:
            if health is not None:
                health.close()
    for reason in reasons:
        print(f"{bead_id}: {reason}", file=out)
    return int(ExitCode.OK)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock = utc_now,
    stream: IO[str] | None = None,
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    explaining = args.job == EXPLAIN
    if explaining != bool(args.bead):
        parser.error("a bead id goes with explain, and only with explain")
    env = os.environ if environ is None else environ
    run_id = new_run_id()
    # explain prints its answer on stdout; its log lines (config errors...) go to stderr.
    log = EventLog(args.job, run_id, clock, sys.stderr if explaining else stream)
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        return _config_error(log, exc)
    if not explaining:
        log.event("run.start", dry_run=args.dry_run, assignee=settings.agent_assignee)
    if not settings.dispatcher_enabled and not explaining:
        # The kill switch: nothing read, nothing written, nothing sent.
        log.event("run.paused", detail=f"{env_name('dispatcher_enabled')} is false; nothing done")
        return 0
    try:
        if resolve_bd_bin(settings.bd_bin) is None:
            raise ConfigError(
                f"{env_name('bd_bin')} {settings.bd_bin!r}: not found or not executable"
            )
        provision(settings.beads_db, settings.beads_metadata_file)
        # The database bd opens for BEADS_DB, by bd's own rules: the lock goes on it, and
        # bd is pointed at it, so two spellings of one database are one database here too.
        database = resolve(settings.beads_db, env)
    except ConfigError as exc:
        return _config_error(log, exc)
    if database.dir != settings.beads_db:
        log.event(
            "database.resolved",
            beads_db=str(settings.beads_db),
            beads_dir=str(database.dir),
            detail=f"{env_name('beads_db')} has no metadata.json: bd uses the beads dir "
            "beside or above it, and so does this run",
        )
    store = BdClient(
        settings.bd_bin,
        database.dir,
        actor=settings.agent_assignee,
        timeout_seconds=settings.bd_timeout_seconds,
    )
    context = RunContext(
        settings,
        store,
        lock_on(database, env, settings.agent_assignee),
        clock,
        log,
        dry_run=args.dry_run,
    )
    if explaining:
        return run_explain(context, args.bead, stream or sys.stdout)
    # Node drain or activeDeadlineSeconds: finish (or hand back) the bead in hand, then exit.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: context.stop.request())
    try:
        return JOBS[args.job](context)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _config_error(log: EventLog, exc: ConfigError) -> int:
    log.error("config.invalid", error=str(exc))
    print(f"configuration error: {exc}", file=sys.stderr)
    return int(ExitCode.CONFIG)


if __name__ == "__main__":
    sys.exit(main())
