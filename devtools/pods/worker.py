"""One pod on the executor's node, from its volumes and env to its terminal status."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from devtools.pods.env import EnvBuilder, expand
from devtools.pods.kube import API_FAILURES, STRATEGIC_PATCH, ApiError, now
from devtools.pods.runner import Pod, translate_path_value
from devtools.pods.volumes import PodConfigError, PodUnsupported, SourceVolume, mount_volumes

if TYPE_CHECKING:
    from devtools.pods.executor import Executor

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 30


def pod_log_path(workdir: Path, namespace: str, name: str) -> Path:
    """Where the executor in `workdir` writes a pod's container output."""
    return workdir / "pods" / f"{namespace}_{name}.log"


def grace_of(pod: dict[str, Any]) -> int:
    """The grace period a deletion gives: the deletion's own, else the pod spec's."""
    given = pod["metadata"].get("deletionGracePeriodSeconds")
    if given is None:
        given = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return max(0, int(given))


@dataclass
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    volumes: list[SourceVolume]


class PodWorker(threading.Thread):
    """Runs one pod: prepare (volumes, env, argv; retried while something is missing) ->
    execute (until exit or deletion) -> report (phase and container state, at each step)."""

    def __init__(self, executor: Executor, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod {metadata['namespace']}/{metadata['name']}", daemon=True)
        self.executor = executor
        self.api = executor.api
        self.pod = pod
        self.namespace = str(metadata["namespace"])
        self.pod_name = str(metadata["name"])
        self.uid = str(metadata["uid"])
        self.status_path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        self.root = executor.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.log_path = pod_log_path(executor.workdir, self.namespace, self.pod_name)
        self.container: dict[str, Any] = {}
        self._terminate = threading.Event()
        self._grace: int | None = None
        self._grace_lock = threading.Lock()
        self.vanished = False
        self._started_at: str | None = None
        self._start_time = (pod.get("status") or {}).get("startTime") or now()
        self._transitions: dict[str, tuple[str, str]] = {}

    def terminate(self, grace: int, vanished: bool = False) -> None:
        """Stop the container: SIGTERM, `grace` seconds, SIGKILL. A shorter grace given
        later (a second, forced delete) shortens the wait, as with the kubelet."""
        with self._grace_lock:
            if self._grace is None or grace < self._grace:
                self._grace = grace
        self.vanished = self.vanished or vanished
        self._terminate.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:
            log.exception("pod %s/%s: executor failure", self.namespace, self.pod_name)
            with contextlib.suppress(Exception):
                self._report_failed_to_start("ExecutorError", str(error))

    def _run(self) -> None:
        reported: str | None = None
        while True:
            try:
                prepared = self._prepare()
                break
            except (PodConfigError, *API_FAILURES, OSError) as error:
                # Missing objects or a transient API failure: retried, as the kubelet does.
                if str(error) != reported:
                    reported = str(error)
                    log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
                    waiting = {"reason": "CreateContainerConfigError", "message": reported}
                    self._report("Pending", "ContainersNotReady", {"waiting": waiting})
            except PodUnsupported as error:
                self._report_failed_to_start("Unsupported", str(error))
                return
            if self._terminate.wait(2.0):
                return  # deleted before it could start: the sync loop finishes it
        if not self._terminate.is_set():
            self._execute(prepared)

    @staticmethod
    def _the_container(spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("initContainers"):
            raise PodUnsupported("init containers are not modelled")
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise PodUnsupported(f"{len(containers)} containers: only one is modelled")
        if spec.get("restartPolicy", "Always") != "Never":
            raise PodUnsupported("only restartPolicy Never is modelled")
        container: dict[str, Any] = containers[0]
        if not container.get("command"):
            raise PodUnsupported("no command: the image's entrypoint is not modelled")
        return container

    def _prepare(self) -> _Prepared:
        self.container = self._the_container(self.pod["spec"])
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        mounts, volumes = mount_volumes(self.api, self.pod, self.container, self.root)
        mapping = Pod(root=self.root, mounts=mounts, env={}, command=[], working_dir=self.root)
        image = self.executor.image
        env = EnvBuilder(self.api, self.pod).build(self.container, image)
        image_path = env.pop("PATH")
        if not image_path.startswith(f"{image.bin_dir}:"):
            # The pod's own PATH names the image's directories: the image bin dir (where
            # its python3 and bd are) stands in for them, so it goes first.
            image_path = f"{image.bin_dir}:{image_path}"
        mapped = {name: translate_path_value(value, mapping) for name, value in env.items()}
        mapped["PATH"] = image_path
        if "HOME" not in mapped:  # the runtime sets it from the image user's home
            mapped["HOME"] = str(mapping.host_path("/root"))
            Path(mapped["HOME"]).mkdir(parents=True, exist_ok=True)
        argv = [expand(str(arg), mapped) for arg in self.container["command"]]
        argv += [expand(str(arg), mapped) for arg in self.container.get("args") or []]
        if "/" in argv[0]:
            argv[0] = str(mapping.host_path(argv[0]))
        else:
            resolved = shutil.which(argv[0], path=image_path)
            if resolved is None:
                raise PodUnsupported(f"{argv[0]!r}: not found on the image's PATH {image_path}")
            argv[0] = resolved
        cwd = mapping.host_path(str(self.container.get("workingDir") or "/"))
        cwd.mkdir(parents=True, exist_ok=True)
        return _Prepared(argv=argv, env=mapped, cwd=cwd, volumes=volumes)

    def _execute(self, prepared: _Prepared) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as output:
            process = subprocess.Popen(
                prepared.argv,
                env=prepared.env,
                cwd=prepared.cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group: the container. SIGTERM goes to the main process
                # only (the runtime signals PID 1); SIGKILL to the whole group.
                start_new_session=True,
            )
        self._started_at = now()
        log.info(
            "pod %s/%s: started pid %d: %s", self.namespace, self.pod_name, process.pid,
            " ".join(prepared.argv),
        )  # fmt: skip
        self._report("Running", None, {"running": {"startedAt": self._started_at}})
        while process.poll() is None:
            if self._terminate.wait(self.executor.refresh_seconds):
                self._kill_container(process)
                break
            for volume in prepared.volumes:
                try:
                    if volume.refresh():
                        log.info(
                            "pod %s/%s: refreshed %s %s", self.namespace, self.pod_name,
                            volume.kind, volume.name,
                        )  # fmt: skip
                except (*API_FAILURES, OSError, PodConfigError) as error:
                    log.warning("pod %s/%s: refresh: %s", self.namespace, self.pod_name, error)
        code = process.wait()
        # The container ends with its main process: nothing it started outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        log.info("pod %s/%s: exited %d", self.namespace, self.pod_name, code)
        terminated: dict[str, Any] = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self._started_at,
            "finishedAt": now(),
        }
        if code < 0:
            terminated["signal"] = -code
        phase = "Succeeded" if code == 0 else "Failed"
        self._report(phase, "PodCompleted", {"terminated": terminated})

    def _kill_container(self, process: subprocess.Popen[bytes]) -> None:
        with self._grace_lock:
            grace = self._grace if self._grace is not None else DEFAULT_GRACE_SECONDS
        log.info("pod %s/%s: SIGTERM, grace %ds", self.namespace, self.pod_name, grace)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            # Re-read: a forced delete may have shortened the grace meanwhile.
            with self._grace_lock:
                deadline = min(deadline, time.monotonic() + (self._grace or 0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        if process.poll() is None:
            log.info("pod %s/%s: SIGKILL after %ds", self.namespace, self.pod_name, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    # -- status ---------------------------------------------------------------------------

    def _report_failed_to_start(self, reason: str, message: str) -> None:
        log.error("pod %s/%s: %s: %s", self.namespace, self.pod_name, reason, message)
        self._report("Failed", reason, None, reason=reason, message=message)

    def _report(
        self, phase: str, why: str | None, state: dict[str, Any] | None, **extra: str
    ) -> None:
        """The pod's status: `phase`, its conditions (Ready only while running; `why` the
        reason of those not true), the container's `state` when it has one."""
        status: dict[str, Any] = {
            "hostIP": self.executor.host_ip,
            "hostIPs": [{"ip": self.executor.host_ip}],
            "startTime": self._start_time,
            "phase": phase,
            **extra,
            "conditions": self._conditions(phase == "Running", why),
        }
        if state is not None:
            running = "running" in state
            status["containerStatuses"] = [
                {"name": self.container["name"], "image": self.container.get("image", ""),
                 "imageID": "", "ready": running, "started": running, "restartCount": 0,
                 "state": state}
            ]  # fmt: skip
        self._patch_status(status)

    def _conditions(self, ready: bool, reason: str | None) -> list[dict[str, Any]]:
        conditions = []
        for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
            value = ready or kind in ("PodReadyToStartContainers", "Initialized")
            status = "True" if value else "False"
            # lastTransitionTime moves only when the condition's status does.
            if self._transitions.get(kind, ("", ""))[0] != status:
                self._transitions[kind] = (status, now())
            condition: dict[str, Any] = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": self._transitions[kind][1],
            }
            if not value and reason:
                condition["reason"] = reason
            conditions.append(condition)
        return conditions

    def _patch_status(self, status: dict[str, Any]) -> None:
        if self.vanished:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        for attempt in range(1, 4):
            try:
                self.api.request("PATCH", self.status_path, body, content_type=STRATEGIC_PATCH)
                return
            except ApiError as error:
                if error.status in (404, 409):  # gone, or a new pod under the same name
                    return
                if error.status < 500 or attempt == 3:
                    raise
            except (httpx.TransportError, OSError):
                if attempt == 3:
                    raise
            time.sleep(1.0)  # a busy or restarting API server: the status must not be lost
