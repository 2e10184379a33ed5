"""The pod's view: the rendered ConfigMaps, mounted as the pod spec mounts them, are enough.

The container runs in a fresh virtualenv holding only pydantic (as the agent image does:
no httpx), with the pod's env and PYTHONPATH, against the fake bd and the BeadBoard stub.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.auto_dispatch import DISPATCHER_NAME, REAPER_NAME
from jobs.lock import LOCK_BEAD_ID
from tests.podrunner import Pod, make_image_like_venv, materialise
from tests.pulumi_harness import Recorder, render_program
from tests.support.beadboard_stub import BeadBoardStub
from tests.support.fake_bd import FakeBd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_like_venv(tmp_path_factory.mktemp("image-venv"))


@pytest.fixture(scope="module")
def rendered() -> Recorder:
    return render_program({"doltPasswordSecretName": "dolt", "doltPasswordSecretKey": "pw"})


def configmaps(rendered: Recorder) -> dict[str, dict[str, Any]]:
    return {
        r.inputs["metadata"]["name"]: r.inputs
        for r in rendered.of_type("kubernetes:core/v1:ConfigMap")
    }


def pod_for(rendered: Recorder, cronjob: str, root: Path) -> Pod:
    spec = rendered.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return materialise(spec, configmaps(rendered), root, secrets={"dolt": {"pw": "s3cret"}})


def test_image_like_venv_has_no_httpx(image_python: Path) -> None:
    probe = subprocess.run(
        [str(image_python), "-c", "import pydantic, httpx"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0 and "No module named 'httpx'" in probe.stderr


def test_shipped_bundle_runs_the_dispatcher(
    rendered: Recorder, image_python: Path, tmp_path: Path, fake_bd: Any
) -> None:
    pod = pod_for(rendered, DISPATCHER_NAME, tmp_path / "pod")
    beads_dir = Path(pod.env["BEADS_DB"])
    api = FakeBd(beads_dir)
    api.init()
    api.create("lock", issue_id=LOCK_BEAD_ID, status="closed", priority=4, issue_type="chore")
    bead = api.create("ship it", assignee="agent", acceptance="done", priority=1)
    with BeadBoardStub() as board:
        # The cluster URL does not resolve here: only the BeadBoard address is swapped.
        completed = pod.run(image_python, {"BEADBOARD_URL": board.url, "BD_BIN": str(fake_bd.bin)})
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert [r.json for r in board.requests_to("/api/agent-dispatch")] == [{"taskId": bead}]
    assert api.get(bead)["status"] == "in_progress"
    # The metadata.json the pod mounts was copied into the writable beads dir.
    mounted = pod.host_path("/etc/beads-autodispatch/bd/metadata.json").read_text()
    assert (beads_dir / "metadata.json").read_text() == mounted
    assert pod.env["BEADS_DOLT_PASSWORD"] == "s3cret"
    assert "s3cret" not in completed.stdout + completed.stderr


def test_httpx_is_imported_from_the_shipped_zip(
    rendered: Recorder, image_python: Path, tmp_path: Path
) -> None:
    pod = pod_for(rendered, DISPATCHER_NAME, tmp_path / "pod")
    probe = Pod(
        **{**pod.__dict__, "command": ["python3", "-c", "import httpx; print(httpx.__file__)"]}
    )
    completed = probe.run(image_python)
    assert completed.returncode == 0, completed.stderr
    assert "vendor.zip/httpx/__init__.py" in completed.stdout


def test_shipped_bundle_runs_the_reaper(
    rendered: Recorder, image_python: Path, tmp_path: Path, fake_bd: Any
) -> None:
    pod = pod_for(rendered, REAPER_NAME, tmp_path / "pod")
    api = FakeBd(Path(pod.env["BEADS_DB"]))
    api.init()
    bead = api.create(
        "stuck",
        assignee="agent",
        status="in_progress",
        acceptance="x",
        updated_at=datetime.now(UTC) - timedelta(hours=2),
    )
    completed = pod.run(image_python, {"BD_BIN": str(fake_bd.bin)})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert api.get(bead)["status"] == "blocked"
