"""`make demo`: the dispatcher and reaper on a local default, no cluster needed.

A fresh beads database made with the real bd 1.0.2 (embedded mode), a BeadBoard stand-in
on loopback, and the jobs run exactly as the CronJobs run them (`python3 -m jobs ...`).
Prints what happened to each bead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.realbd import RealBd, real_bd_path
from tests.support.beadboard_stub import BeadBoardStub

ROOT = Path(__file__).resolve().parent.parent


def run_job(job: str, env: dict[str, str]) -> int:
    print(f"\n$ python3 -m jobs {job}")
    completed = subprocess.run(
        [sys.executable, "-m", "jobs", job], env=env, cwd=ROOT, text=True, check=False
    )
    print(f"(exit {completed.returncode})")
    return completed.returncode


def main() -> int:
    binary = real_bd_path()
    if binary is None:
        print("BD_REAL is not set: run this through `make demo`, which builds bd first.")
        return 2
    with tempfile.TemporaryDirectory(prefix="beads-demo-") as tmp, BeadBoardStub() as board:
        bd = RealBd(binary, Path(tmp) / "project").init(prefix="demo")
        beads = {
            "urgent, with acceptance criteria": bd.create(
                "Fix the flaky login test",
                priority=0,
                assignee="agent",
                acceptance="test passes 20 times in a row",
            ),
            "normal, with acceptance criteria": bd.create(
                "Document the backup job",
                priority=2,
                assignee="agent",
                acceptance="runbook has a backup section",
            ),
            "no acceptance criteria (never dispatched)": bd.create(
                "Think about caching", priority=1, assignee="agent"
            ),
            "assigned to a human (never touched)": bd.create(
                "Review the roadmap", priority=0, assignee="alice", acceptance="done"
            ),
        }
        stuck = bd.create("Agent run that died", priority=2, assignee="agent", acceptance="x")
        bd.update(stuck, "--status", "in_progress")
        beads["in_progress, no update for 31 min (reaper)"] = stuck

        env = {
            **bd.env(),
            "PYTHONPATH": str(ROOT),
            "BD_BIN": str(binary),
            "BEADS_DB": str(bd.beads_dir),
            "BEADBOARD_URL": board.url,
        }
        print(f"beads database: {bd.beads_dir}\nBeadBoard stand-in: {board.url}")
        # First run creates the dispatch lock; the next two dispatch one bead each.
        for _ in range(3):
            run_job("dispatch", env)
        # Every bead was updated seconds ago; run the reaper as if 31 minutes had passed.
        # No agent runs in the demo, so the two dispatched beads look stuck as well.
        print("\n(the reaper runs as if 31 minutes had passed with no agent making progress)")
        later = (datetime.now(UTC) + timedelta(minutes=31)).isoformat()
        run_job("reap", {**env, "AUTODISPATCH_NOW": later})

        print("\nWhat BeadBoard received:")
        for request in board.requests:
            print(f"  {request.method} {request.path} {request.text if request.body else ''}")
        print("\nBeads afterwards:")
        for label, bead_id in beads.items():
            bead = bd.show(bead_id)
            print(
                f"- {bead_id} [{label}]: "
                f"status={bead['status']} assignee={bead.get('assignee', '')}"
            )
            for line in str(bead.get("notes", "")).splitlines():
                print(f"    note: {line}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
