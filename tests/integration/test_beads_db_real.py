"""BEADS_DB spelled several ways over one real embedded-mode database (bd 1.0.2).

bd opens `<repo>/.beads` for `--db <repo>/.beads`, `--db <repo>/dispatcher-2` and
`--db <repo>/sub/deeper` alike (a dir without metadata.json names the .beads beside or above
it). Dispatchers started at once with those spellings must take one lock and POST the bead
once; `<repo>/.beads/beads.db`, which does not exist, is refused before anything runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub
from devtools.pods.process import JobRun, start_jobs
from jobs.lock import LOCK_FILE_NAME
from tests.integration.conftest import RealJobRunner, real_env
from tests.support.routes import DISPATCH

SPELLINGS = (".beads", "dispatcher-2", "sub/deeper", ".beads/beads.db")
# Each round starts every spelling at once; without one lock a round double-dispatched in
# 3 of 5 (test_claim_race.py), so 5 rounds miss a regression rarely, and the lock paths
# (asserted every round) never.
ROUNDS = 5


def test_every_spelling_of_one_database_takes_one_lock_and_the_bead_goes_out_once(
    real_bd: RealBd, beadboard: BeadBoardStub
) -> None:
    repo = real_bd.workdir
    for spelling in ("dispatcher-2", "sub/deeper"):
        (repo / spelling).mkdir(parents=True)
    lock_file = repo / ".beads" / LOCK_FILE_NAME
    for round_number in range(ROUNDS):
        bead = real_bd.create(f"race {round_number}", assignee="agent", acceptance="x")
        beadboard.clear()
        processes = [
            start_jobs(["dispatch"], real_env(real_bd, beadboard.url, BEADS_DB=str(repo / s)))
            for s in SPELLINGS
        ]
        outputs = [process.communicate(timeout=180) for process in processes]
        runs = [JobRun(p.returncode, *out) for p, out in zip(processes, outputs, strict=True)]
        posts = [r for r in beadboard.requests_to(DISPATCH) if r.json["taskId"] == bead]
        assert len(posts) == 1, [run.stdout for run in runs]
        assert [run.code for run in runs] == [0, 0, 0, 2], [run.stderr for run in runs]
        assert "BEADS_DB" in runs[-1].stderr and "no such directory" in runs[-1].stderr
        locks = {
            e["lock"] for run in runs[:-1] for e in run.events if e["event"] == "lock.acquired"
        }
        assert locks <= {f"flock {lock_file}"}, locks
        assert real_bd.show(bead)["status"] == "in_progress"
    assert not (repo / "dispatcher-2" / LOCK_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"dolt_server_port": "3306"}, "dolt_server_port"),
        ({"dolt_server_tls": "yes"}, "dolt_server_tls"),
    ],
)
def test_metadata_bd_cannot_read_is_named_before_bd_fails_on_it(
    real_bd: RealBd, run_real: RealJobRunner, metadata: dict[str, str], field: str
) -> None:
    path = real_bd.beads_dir / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **metadata}), encoding="utf-8")
    # bd itself: exit 1, a cause that names neither the file nor the field.
    failed = subprocess.run(
        [str(real_bd.binary), "--db", str(real_bd.beads_dir), "list", "--json"],
        env=real_bd.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert "database name must not be empty" in failed.stdout + failed.stderr
    run = run_real("dispatch")
    assert run.code == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"configuration error: {path}: {field} must be "), line


def test_a_beads_db_with_no_beads_dir_above_is_named_before_bd_fails_on_it(
    real_bd: RealBd, run_real: RealJobRunner, tmp_path: Path
) -> None:
    lonely = tmp_path / "lonely" / "db"
    lonely.mkdir(parents=True)
    failed = subprocess.run(
        [str(real_bd.binary), "--db", str(lonely), "list", "--json"],
        env=real_bd.env(),
        cwd=lonely,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert "database name must not be empty" in failed.stdout + failed.stderr
    run = run_real("dispatch", BEADS_DB=str(lonely))
    assert run.code == 2
    assert run.stderr.startswith(
        f"configuration error: BEADS_DB {lonely}: bd would read "
        f"{lonely.parent / 'metadata.json'}, which does not exist"
    )
