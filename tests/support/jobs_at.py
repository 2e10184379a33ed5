"""`python -m tests.support.jobs_at <RFC 3339 instant> dispatch|reap [--dry-run]`

Runs `python3 -m jobs` as a process whose clock starts at the given instant and then runs
at real speed: a reaper "11 minutes ahead" racing a real dispatcher, or a run "31 minutes
later" against a real bd, without any clock override in the jobs' own env contract.
"""

from __future__ import annotations

import sys
from datetime import datetime

from jobs.__main__ import main
from jobs.log import Clock, utc_now


def shifted_clock(pretend_now: datetime, clock: Clock = utc_now) -> Clock:
    """A clock that reads `pretend_now` now and then advances with `clock`."""
    offset = pretend_now - clock()
    return lambda: clock() + offset


MODULE = "tests.support.jobs_at"


def at(instant: datetime, *job_args: str) -> list[str]:
    """The arguments that run `python -m jobs <job_args>` with its clock at `instant`."""
    return [instant.isoformat(), *job_args]


def run(argv: list[str]) -> int:
    instant = datetime.fromisoformat(argv[0].replace("Z", "+00:00"))
    if instant.tzinfo is None:
        raise SystemExit(f"jobs_at: {argv[0]!r} needs a UTC offset (e.g. ...Z)")
    return main(argv[1:], clock=shifted_clock(instant))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
