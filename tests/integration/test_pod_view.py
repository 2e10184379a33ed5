"""The pod's view: the rendered ConfigMaps, mounted as the pod spec mounts them, are enough.

The container runs in a fresh virtualenv holding only pydantic (as the agent image does:
no httpx), with the pod's env and PYTHONPATH, against the real bd and the BeadBoard stub.
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
from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DOLT_PASSWORD, DoltServer
from devtools.manifests.mocks import Recorder, render_program
from devtools.pods.runner import Pod, make_image_like_venv, materialise
from jobs.lock import LOCK_FILE_NAME
from tests.support.routes import DISPATCH

pytestmark = pytest.mark.integration


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


def pod_database(bd_binary: Path, pod: Pod) -> RealBd:
    """A real embedded-mode database where the pod's BEADS_DB points (`<dir>/.beads`)."""
    beads_dir = Path(pod.env["BEADS_DB"])
    assert beads_dir.name == ".beads", beads_dir
    return RealBd(bd_binary, beads_dir.parent).init()


def stuck_bead(bd: RealBd) -> str:
    """An agent bead in progress, untouched for two hours."""
    bead = bd.create("stuck", assignee="agent", acceptance="x")
    bd.update(bead, "--status", "in_progress")
    bd.backdate(bead, 120)
    return bead


def own_metadata(bd: RealBd, directory: Path) -> Path:
    """The embedded database's own metadata.json, as a file outside the pod to copy in."""
    path = directory / "metadata.json"
    path.write_text((bd.beads_dir / "metadata.json").read_text())
    return path


def metadata_like_the_mount(pod: Pod, directory: Path, **changes: object) -> Path:
    """The mounted metadata.json with some keys changed, as a file outside the pod."""
    metadata = json.loads(pod.host_path(MOUNTED_METADATA).read_text())
    path = directory / "metadata.json"
    path.write_text(json.dumps({**metadata, **changes}))
    return path


@pytest.mark.parametrize("cronjob", [DISPATCHER_NAME, REAPER_NAME])
def test_shipped_bundle_takes_the_dolt_lock_in_server_mode(
    rendered: Recorder,
    image_python: Path,
    tmp_path: Path,
    dolt_server: DoltServer,
    cronjob: str,
) -> None:
    spec = rendered.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod = materialise(
        spec, configmaps(rendered), tmp_path / "pod", secrets={"dolt": {"pw": DOLT_PASSWORD}}
    )
    mounted = pod.host_path(MOUNTED_METADATA)
    assert pod.env["BEADS_METADATA_FILE"] == str(mounted)
    assert json.loads(mounted.read_text())["dolt_mode"] == "server"
    # The test server stands in for dolt.beads-server: only its address is swapped.
    swapped = metadata_like_the_mount(
        pod, tmp_path, dolt_server_host="127.0.0.1", dolt_server_port=dolt_server.port
    )
    client = dolt_server.client_dir(tmp_path / "client")
    bead = dolt_server.bd_run(
        client, "create", f"ship it ({cronjob})", "--assignee", "agent", "--acceptance", "x",
        "--priority", "0", "--silent",
    ).strip()  # fmt: skip
    stuck = dolt_server.bd_run(
        client, "create", f"stuck ({cronjob})", "--assignee", "agent", "--acceptance", "x",
        "--silent",
    ).strip()  # fmt: skip
    dolt_server.bd_run(client, "update", stuck, "--status", "in_progress")
    backdate_in_server_mode(dolt_server, client, stuck, minutes=120)
    with BeadBoardStub() as board:
        completed = pod.run(
            image_python,
            {
                "BEADBOARD_URL": board.url,
                "BD_BIN": str(dolt_server.bd),
                "BEADS_METADATA_FILE": str(swapped),
            },
        )
        posts = [r.json for r in board.requests_to(DISPATCH)]
    # PyMySQL came from vendor.zip (the image has none) and took the named lock on Dolt.
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr == ""
    acquired = [e for e in events(completed.stdout) if e["event"] == "lock.acquired"]
    assert acquired and "GET_LOCK" in acquired[0]["lock"], completed.stdout
    if cronjob == DISPATCHER_NAME:
        assert {"taskId": bead} in posts
    else:
        assert posts == []
        assert stuck in events(completed.stdout)[-1]["blocked"]
    assert pod.env["BEADS_DOLT_PASSWORD"] == DOLT_PASSWORD
    assert DOLT_PASSWORD not in completed.stdout + completed.stderr


def backdate_in_server_mode(server: DoltServer, client: Path, bead: str, minutes: float) -> None:
    """`bd import` of the bead's row with an old updated_at, through the server."""
    [row] = json.loads(server.bd_run(client, "show", bead, "--json"))
    then = datetime.now(UTC) - timedelta(minutes=minutes)
    row["updated_at"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
    source = client.parent / f"{bead}.jsonl"
    source.write_text(json.dumps(row) + "\n")
    server.bd_run(client, "import", str(source))


def test_shipped_bundle_runs_the_dispatcher(
    rendered: Recorder, image_python: Path, tmp_path: Path, bd_binary: Path
) -> None:
    pod = pod_for(rendered, DISPATCHER_NAME, tmp_path / "pod")
    beads_dir = Path(pod.env["BEADS_DB"])
    bd = pod_database(bd_binary, pod)
    # Embedded mode (as the local stack runs): the lock is a flock beside the database.
    embedded = own_metadata(bd, tmp_path)
    bead = bd.create("ship it", assignee="agent", acceptance="done", priority=1)
    with BeadBoardStub() as board:
        # The cluster URL does not resolve here: only the BeadBoard address is swapped.
        completed = pod.run(
            image_python,
            {
                "BEADBOARD_URL": board.url,
                "BD_BIN": str(bd_binary),
                "BEADS_METADATA_FILE": str(embedded),
            },
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert [r.json for r in board.requests_to(DISPATCH)] == [{"taskId": bead}]
    assert bd.show(bead)["status"] == "in_progress"
    assert bd.show(bead)["comments"][0]["text"].startswith("dispatched: job=job-1 ")
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
    rendered: Recorder, image_python: Path, tmp_path: Path, bd_binary: Path
) -> None:
    pod = pod_for(rendered, REAPER_NAME, tmp_path / "pod")
    bd = pod_database(bd_binary, pod)
    bead = stuck_bead(bd)
    embedded = own_metadata(bd, tmp_path)
    completed = pod.run(
        image_python, {"BD_BIN": str(bd_binary), "BEADS_METADATA_FILE": str(embedded)}
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert bd.show(bead)["status"] == "blocked"
