"""K dispatchers started at the same instant over one database and one eligible bead.

bd 1.0.2's `--claim` is a no-op for beads already assigned to the actor, so without the
dispatch lock this double-dispatches (measured: 3 of 5 rounds with K=4). With it: never.
"""

from __future__ import annotations

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub
from devtools.pods.process import start_jobs
from tests.integration.conftest import real_env
from tests.support.routes import DISPATCH

DISPATCHERS = 4
# Without the lock 3 of 5 rounds went wrong: 8 rounds miss a regression with p < 0.001. The
# server-mode lock gets 20 rounds with a reaper in test_dolt_lock.py.
ROUNDS = 8


def test_concurrent_dispatchers_never_dispatch_a_bead_twice(
    real_bd: RealBd, beadboard: BeadBoardStub
) -> None:
    env = real_env(real_bd, beadboard.url, BD_TIMEOUT_SECONDS="60")
    per_round: list[tuple[int, list[int]]] = []
    for round_number in range(ROUNDS):
        bead = real_bd.create(f"race {round_number}", assignee="agent", acceptance="x")
        beadboard.clear()
        processes = [start_jobs(["dispatch"], env) for _ in range(DISPATCHERS)]
        for process in processes:
            process.communicate(timeout=180)
        posts = [r for r in beadboard.requests_to(DISPATCH) if r.json == {"taskId": bead}]
        per_round.append((len(posts), [p.returncode for p in processes]))
        assert real_bd.show(bead)["status"] == "in_progress"
    print(
        f"\nclaim race: K={DISPATCHERS}, rounds={ROUNDS}, dispatches per round: "
        f"{[count for count, _ in per_round]}, exit codes: {[codes for _, codes in per_round]}"
    )
    assert all(count == 1 for count, _ in per_round), per_round
