"""The pod's view: the rendered ConfigMaps, mounted as the pod spec mounts them, are enough.

The container runs in a fresh virtualenv holding only pydantic (as the agent image does:
no httpx), with the pod's env and PYTHONPATH, against the fake bd and the BeadBoard stub.
"""

from __future__ import annotations

import json
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from components.names import DISPATCHER_NAME, REAPER_NAME
from jobs.lock import LOCK_FILE_NAME
from localservices.beadboard import BeadBoardStub
from manifests.mocks import Recorder, render_program
from pods.runner import Pod, make_image_like_venv, materialise
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


MOUNTED_METADATA = "/etc/beads-autodispatch/bd/metadata.json"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def metadata_like_the_mount(pod: Pod, directory: Path, **changes: object) -> Path:
    """The mounted metadata.json with some keys changed, as a file outside the pod."""
    metadata = json.loads(pod.host_path(MOUNTED_METADATA).read_text())
    path = directory / "metadata.json"
    path.write_text(json.dumps({**metadata, **changes}))
    return path


@pytest.mark.parametrize("cronjob", [DISPATCHER_NAME, REAPER_NAME])
def test_shipped_bundle_asks_dolt_for_the_dispatch_lock(
    rendered: Recorder, image_python: Path, tmp_path: Path, fake_bd: Any, cronjob: str
) -> None:
    pod = pod_for(rendered, cronjob, tmp_path / "pod")
    mounted = pod.host_path(MOUNTED_METADATA)
    assert pod.env["BEADS_METADATA_FILE"] == str(mounted)
    assert json.loads(mounted.read_text())["dolt_mode"] == "server"
    # No Dolt here: only its address is swapped, for a local port nobody answers on.
    port = closed_port()
    swapped = metadata_like_the_mount(
        pod, tmp_path, dolt_server_host="127.0.0.1", dolt_server_port=port
    )
    api = FakeBd(Path(pod.env["BEADS_DB"]))
    api.init()
    # A bead each job would act on, so each asks for the lock.
    api.create("ship it", assignee="agent", acceptance="done", priority=1)
    api.create(
        "stuck",
        assignee="agent",
        status="in_progress",
        acceptance="x",
        updated_at=datetime.now(UTC) - timedelta(hours=2),
    )
    before = api.all()
    with BeadBoardStub() as board:
        completed = pod.run(
            image_python,
            {
                "BEADBOARD_URL": board.url,
                "BD_BIN": str(fake_bd.bin),
                "BEADS_METADATA_FILE": str(swapped),
            },
        )
        assert board.requests_to("/api/agent-dispatch") == []
    # PyMySQL came from vendor.zip (the image has none) and tried the server: a clean failure.
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert completed.stderr == ""
    [failed] = [e for e in events(completed.stdout) if e["level"] == "error"]
    assert failed["kind"] == "LockError"
    assert f"cannot connect to Dolt at 127.0.0.1:{port}" in failed["error"]
    assert api.all() == before
    assert pod.env["BEADS_DOLT_PASSWORD"] == "s3cret"
    assert "s3cret" not in completed.stdout + completed.stderr


def test_shipped_bundle_runs_the_dispatcher(
    rendered: Recorder, image_python: Path, tmp_path: Path, fake_bd: Any
) -> None:
    pod = pod_for(rendered, DISPATCHER_NAME, tmp_path / "pod")
    beads_dir = Path(pod.env["BEADS_DB"])
    # Embedded mode (as the local stack runs): the lock is a flock beside the database.
    embedded = metadata_like_the_mount(pod, tmp_path, dolt_mode="embedded")
    api = FakeBd(beads_dir)
    api.init()
    bead = api.create("ship it", assignee="agent", acceptance="done", priority=1)
    with BeadBoardStub() as board:
        # The cluster URL does not resolve here: only the BeadBoard address is swapped.
        completed = pod.run(
            image_python,
            {
                "BEADBOARD_URL": board.url,
                "BD_BIN": str(fake_bd.bin),
                "BEADS_METADATA_FILE": str(embedded),
            },
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert [r.json for r in board.requests_to("/api/agent-dispatch")] == [{"taskId": bead}]
    assert api.get(bead)["status"] == "in_progress"
    assert api.comments(bead)[0]["text"].startswith("dispatched: job=job-1 ")
    # The metadata.json named by the env was copied into the writable beads dir.
    assert (beads_dir / "metadata.json").read_text() == embedded.read_text()
    assert (beads_dir / LOCK_FILE_NAME).exists()


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
    embedded = metadata_like_the_mount(pod, tmp_path, dolt_mode="embedded")
    completed = pod.run(
        image_python, {"BD_BIN": str(fake_bd.bin), "BEADS_METADATA_FILE": str(embedded)}
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert api.get(bead)["status"] == "blocked"
