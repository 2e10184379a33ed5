"""One control plane, one pod executor, one Dolt server, one BeadBoard stand-in and one
`pulumi up` per session (per xdist worker), shared by every test in this package.

- `cluster`: etcd + kube-apiserver + kube-controller-manager + kube-scheduler v1.34.12 on
  loopback (devtools/localcluster/; the binaries are built by tools/build-kube.sh when missing);
- `executor`: `python -m devtools.pods` as a process of its own, the Node every pod is bound to;
  it runs containers in an agent-image stand-in (a venv with only pydantic, bd 1.0.2);
- `dolt`: a real `dolt sql-server` with bd's schema, reached by the pods in server mode
  with the password from a Secret (`secretKeyRef`);
- `deployed`: the `cluster` stack applied to a namespace enforcing Pod Security
  "restricted", in the base configuration below; a test that changes the stack puts it back.

On a failing test the report gets the tail of the executor's log, of each component's log
and the namespace's events.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pulumi import automation as auto

from devtools.localcluster import Cluster, ClusterError, start_cluster
from devtools.localdeploy.stack import PROJECT, ClusterStack, pulumi_cli
from devtools.localservices.bd import ToolBuildError, build_tool, real_bd_path
from devtools.localservices.beadboard import AGENT_DISPATCH, BeadBoardStub
from devtools.localservices.dolt import DATABASE, DOLT_PASSWORD, DOLT_USER, DoltServer, dolt_server
from devtools.paths import ROOT
from devtools.pods.kube import Api, KubeConfig
from devtools.pods.runner import make_image_like_venv
from devtools.pods.worker import pod_log_path

NAMESPACE = "beads-e2e"
NODE_NAME = "executor"
DOLT_SECRET = "beads-dolt"
DISPATCHER = "beads-dispatcher"
REAPER = "beads-reaper"
# The controller's mark on the Jobs it creates on schedule, and kubectl's on `--from` ones.
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MANUAL_ANNOTATION = "cronjob.kubernetes.io/instantiate"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------------------


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5
) -> T:
    """`probe()` until it returns something other than None/False; AssertionError naming
    `what` (and the last value seen) once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def seconds_to_next_minute() -> float:
    now = datetime.now(UTC)
    return 60 - now.second - now.microsecond / 1e6


# ---------------------------------------------------------------------------------------
# Tools and services
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bd_binary() -> Path:
    given = real_bd_path()
    if given is not None:
        return given
    try:
        return build_tool("bd")
    except ToolBuildError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the agent image offers `python3`: a venv with nothing but pydantic."""
    return make_image_like_venv(tmp_path_factory.mktemp("image-venv"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        with start_cluster(tmp_path_factory.mktemp("localcluster")) as started:
            _DIAGNOSTICS.cluster = started
            yield started
    except ClusterError as error:
        pytest.fail(f"control plane: {error}")
    finally:
        _DIAGNOSTICS.cluster = None


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> Api:
    return Api(KubeConfig.load(cluster.kubeconfig))


@dataclass
class ExecutorProcess:
    workdir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def pod_log(self, namespace: str, pod: str) -> str:
        path = pod_log_path(self.workdir, namespace, pod)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _node_ready(api: Api) -> bool:
    node = api.get_optional(f"/api/v1/nodes/{NODE_NAME}")
    if node is None:
        return False
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and not node.get("spec", {}).get("taints")


@pytest.fixture(scope="session")
def executor(
    cluster: Cluster,
    api: Api,
    image_python: Path,
    bd_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ExecutorProcess]:
    """The kubelet stand-in, as its own process: `python -m devtools.pods`."""
    workdir = tmp_path_factory.mktemp("executor")
    log = workdir / "executor.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "devtools.pods",
                "--kubeconfig", str(cluster.kubeconfig),
                "--workdir", str(workdir),
                "--node-name", NODE_NAME,
                "--python", str(image_python),
                "--bd", str(bd_binary),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    running = ExecutorProcess(workdir, log, process)
    _DIAGNOSTICS.executor = running
    try:
        wait_until(
            f"node {NODE_NAME} Ready and untainted",
            lambda: process.poll() is not None or _node_ready(api),
            timeout=60,
        )
        assert process.poll() is None, f"executor exited:\n{running.log_text()}"
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        _DIAGNOSTICS.executor = None


@pytest.fixture(scope="session")
def dolt(bd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoltServer]:
    try:
        with dolt_server(bd_binary, tmp_path_factory.mktemp("dolt")) as server:
            yield server
    except ToolBuildError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def board() -> Iterator[BeadBoardStub]:
    with BeadBoardStub() as stub:
        yield stub


@dataclass
class ServerBeads:
    """bd 1.0.2 against the test's Dolt server, as a person at a terminal would use it."""

    server: DoltServer
    client: Path

    def run(self, *args: str) -> str:
        return self.server.bd_run(self.client, *args)

    def create(self, title: str, *, acceptance: str | None = "it works") -> str:
        args = ["create", title, "--assignee", "agent", "--silent"]
        if acceptance:
            args += ["--acceptance", acceptance]
        return self.run(*args).strip()

    def show(self, bead: str) -> dict[str, Any]:
        rows: list[dict[str, Any]] = json.loads(self.run("show", bead, "--json"))
        return rows[0]

    def comments(self, bead: str) -> list[str]:
        return [str(c["text"]) for c in self.show(bead).get("comments") or []]

    def backdate(self, bead: str, minutes: float) -> None:
        """Make a bead look untouched for `minutes` (bd import upserts it with its stamps;
        devtools/localservices/bd.py's RealBd.backdate, through the server)."""
        row = self.show(bead)
        then = datetime.now(UTC) - timedelta(minutes=minutes)
        row["updated_at"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
        source = self.client.parent / f"backdate-{bead}.jsonl"
        source.write_text(json.dumps(row) + "\n", encoding="utf-8")
        self.run("import", str(source))
        source.unlink()


@pytest.fixture(scope="session")
def beads(dolt: DoltServer, tmp_path_factory: pytest.TempPathFactory) -> ServerBeads:
    return ServerBeads(dolt, dolt.client_dir(tmp_path_factory.mktemp("bd-client") / ".beads"))


def posts_for(board: BeadBoardStub, bead: str) -> int:
    return sum(1 for r in board.requests_to(AGENT_DISPATCH) if r.json == {"taskId": bead})


# ---------------------------------------------------------------------------------------
# The namespace and the stack
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def namespace(cluster: Cluster) -> str:
    """A namespace enforcing Pod Security "restricted", holding the Dolt password Secret."""
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl(
        "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    cluster.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", DOLT_SECRET,
        f"--from-literal=password={DOLT_PASSWORD}",
    )  # fmt: skip
    _DIAGNOSTICS.namespace = NAMESPACE
    return NAMESPACE


def base_config(namespace: str, dolt: DoltServer, board: BeadBoardStub) -> dict[str, str]:
    """The stack config of the tests: everything pointed at the loopback services."""
    return {
        "namespace": namespace,
        "doltHost": "127.0.0.1",
        "doltPort": str(dolt.port),
        "doltDatabase": DATABASE,
        "doltUser": DOLT_USER,
        "doltPasswordSecretName": DOLT_SECRET,
        "doltPasswordSecretKey": "password",
        "beadboardUrl": board.url,
        "imagePullSecret": "",
        "dispatcherSchedule": "* * * * *",
        # Below the one-minute interval, as check_timing demands.
        "dispatcherDeadlineSeconds": "45",
        # Never due while the suite runs (a yearly schedule): the reaper runs when a test
        # creates a Job from it.
        "reaperSchedule": "0 0 1 1 *",
        "httpTimeoutSeconds": "5",
    }


@dataclass
class DeployedStack:
    """The cluster stack, and what it is currently deployed with."""

    stack: ClusterStack
    base: dict[str, str]
    first_up: auto.UpResult
    current: dict[str, str] = field(default_factory=dict)
    destroyed: bool = False

    def apply(self, changes: dict[str, str]) -> auto.UpResult:
        """Set config keys and `pulumi up`."""
        for key, value in changes.items():
            self.stack.set_config(key, value)
        self.current.update(changes)
        result = self.stack.up()
        assert result.summary.result == "succeeded", result.stdout
        self.destroyed = False
        return result

    def converge(self, target: dict[str, str]) -> None:
        """Exactly `target` as the stack's config, deployed; no `up` when it already is."""
        changed = {k: v for k, v in target.items() if self.current.get(k) != v}
        extra = [k for k in self.current if k not in target]
        for key in extra:
            self.stack.stack.remove_config(f"{PROJECT}:{key}")
            del self.current[key]
        if changed or extra or self.destroyed:
            self.apply(changed)


@pytest.fixture(scope="session")
def cluster_stack(
    cluster: Cluster,
    namespace: str,
    dolt: DoltServer,
    board: BeadBoardStub,
    executor: ExecutorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> DeployedStack:
    """The first `pulumi up` of the session (its result is what test 1 looks at)."""
    try:
        cli = pulumi_cli()
    except RuntimeError as error:
        pytest.fail(f"cannot build the pulumi toolchain: {error}")
    config = base_config(namespace, dolt, board)
    work_dir = tmp_path_factory.mktemp("cluster-stack") / "project"
    stack = ClusterStack.create(work_dir, cluster.kubeconfig, config, cli, output=print)
    result = stack.up()
    assert result.summary.result == "succeeded", result.stdout
    return DeployedStack(stack, config, result, current=dict(config))


@pytest.fixture
def deployed(cluster_stack: DeployedStack) -> DeployedStack:
    """The stack as the base config deploys it, whatever an earlier test did."""
    cluster_stack.converge(cluster_stack.base)
    return cluster_stack


# A dispatcher run polls every 2 s for a minute. A one-minute schedule would allow at most
# 27 s (window + poll interval + 30 <= deadline < interval, check_timing): too little
# room for a `pulumi up` on a busy machine while a window runs, hence every two minutes.
WINDOW_SECONDS = 60
WINDOW_CONFIG = {
    "dispatcherSchedule": "*/2 * * * *",
    "dispatcherWindowSeconds": str(WINDOW_SECONDS),
    "pollIntervalSeconds": "2",
    "dispatcherDeadlineSeconds": "100",
    # The tests read back Jobs they start by hand, which the CronJob owns: with the default
    # limit of 1 the controller may trim one the moment another succeeds, before it is read.
    "successfulJobsHistoryLimit": "10",
}


@pytest.fixture
def windowed(cluster_stack: DeployedStack) -> DeployedStack:
    """The base config with a watch window."""
    cluster_stack.converge(cluster_stack.base | WINDOW_CONFIG)
    return cluster_stack


# ---------------------------------------------------------------------------------------
# Jobs and their pods
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A finished Job of ours, its pod, and what its container printed."""

    job: dict[str, Any]
    pod: dict[str, Any]
    output: str

    @property
    def events(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.output.splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and "event" in value:
                    parsed.append(value)
        return parsed

    def event(self, name: str) -> dict[str, Any]:
        matches = [e for e in self.events if e["event"] == name]
        assert matches, f"no {name!r} event in:\n{self.output}"
        return matches[-1]

    @property
    def pod_phase(self) -> str:
        return str(self.pod.get("status", {}).get("phase"))

    @property
    def exit_code(self) -> int | None:
        for status in self.pod.get("status", {}).get("containerStatuses") or []:
            terminated = status.get("state", {}).get("terminated")
            if terminated:
                return int(terminated["exitCode"])
        return None

    @property
    def scheduled(self) -> bool:
        """Created by the CronJob controller on schedule (not `kubectl create job --from`)."""
        annotations = self.job["metadata"].get("annotations") or {}
        return SCHEDULED_ANNOTATION in annotations and MANUAL_ANNOTATION not in annotations


def job_finished(job: dict[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


@dataclass
class Jobs:
    """Reads of the namespace's Jobs and pods through the API server."""

    api: Api
    namespace: str
    executor: ExecutorProcess

    def owned_by(self, cronjob: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.get(
            f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        )["items"]
        if cronjob is None:
            return items
        return [
            job
            for job in items
            if any(o["name"] == cronjob for o in job["metadata"].get("ownerReferences") or [])
        ]

    def pod_of(self, job_name: str) -> dict[str, Any] | None:
        pods = self.api.get(
            f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"batch.kubernetes.io/job-name={job_name}"},
        )["items"]
        return pods[0] if pods else None

    def finished_run(self, job_name: str) -> Run | None:
        """The Run of a Job once it is finished and its pod is terminal, else None."""
        job = self.api.get_optional(f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{job_name}")
        if job is None or not job_finished(job):
            return None
        pod = self.pod_of(job_name)
        if pod is None or pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            return None
        return Run(job, pod, self.executor.pod_log(self.namespace, pod["metadata"]["name"]))

    def wait(self, job_name: str, timeout: float = 90) -> Run:
        return wait_until(f"Job {job_name} to finish", lambda: self.finished_run(job_name), timeout)

    def create_from(self, cluster: Cluster, cronjob: str, job_name: str) -> Run:
        """`kubectl create job --from=cronjob/<cronjob> <job_name>`, waited for."""
        cluster.kubectl(
            "-n", self.namespace, "create", "job", f"--from=cronjob/{cronjob}", job_name
        )  # fmt: skip
        return self.wait(job_name)

    def scheduled_runs(self, cronjob: str) -> list[Run]:
        """The finished Jobs the CronJob controller created on schedule, oldest first."""
        runs = []
        for job in self.owned_by(cronjob):
            run = self.finished_run(job["metadata"]["name"])
            if run is not None and run.scheduled:
                runs.append(run)
        return sorted(runs, key=lambda r: r.job["metadata"]["creationTimestamp"])


@pytest.fixture(scope="session")
def jobs(api: Api, namespace: str, executor: ExecutorProcess) -> Jobs:
    return Jobs(api, namespace, executor)


# ---------------------------------------------------------------------------------------
# What a failing test shows
# ---------------------------------------------------------------------------------------


@dataclass
class _Diagnostics:
    cluster: Cluster | None = None
    executor: ExecutorProcess | None = None
    namespace: str | None = None

    def report(self) -> str:
        parts: list[str] = []
        if self.executor is not None:
            parts.append(f"--- executor log (end of {self.executor.log}):")
            parts.append("\n".join(self.executor.log_text().splitlines()[-60:]))
        if self.cluster is not None:
            for log in sorted(self.cluster.log_dir.glob("*.log")):
                text = log.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- end of {log}:")
                parts.append("\n".join(text))
            if self.namespace is not None:
                with contextlib.suppress(ClusterError, subprocess.SubprocessError):
                    events = self.cluster.kubectl(
                        "-n", self.namespace, "get", "events", "--sort-by=.lastTimestamp",
                        check=False, timeout=20,
                    )  # fmt: skip
                    parts.append(f"--- events in {self.namespace}:")
                    parts.append("\n".join(events.stdout.splitlines()[-40:]))
        return "\n".join(parts)


_DIAGNOSTICS = _Diagnostics()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and os.environ.get("CLUSTER_DIAGNOSTICS", "1") != "0":
        with contextlib.suppress(Exception):  # diagnostics must never mask the failure
            report.sections.append(("cluster diagnostics", _DIAGNOSTICS.report()))
