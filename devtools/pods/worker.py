"""One pod on the executor's Node: prepare (volumes, env, argv; retried while an object it
needs is missing) -> run (until it exits or is deleted) -> report, in the pod's status."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from devtools.pods.env import api_lookup, container_env, expand
from devtools.pods.kube import API_FAILURES, Api, ApiError, now
from devtools.pods.runner import Pod, translate_path_value
from devtools.pods.volumes import ConfigMapVolume, mount_volumes

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # how often a running pod's configMap volumes are checked
TICK_SECONDS = 0.2  # how soon an exit or a deletion is noticed


def pod_log_path(workdir: Path, namespace: str, name: str) -> Path:
    """Where the executor in `workdir` writes a pod's container output."""
    return workdir / "pods" / f"{namespace}_{name}.log"


class PodWorker(threading.Thread):
    """Runs one pod. The executor's sync loop starts it and calls `terminate`."""

    def __init__(self, api: Api, image_path: str, workdir: Path, pod: dict[str, Any]) -> None:
        namespace, name = str(pod["metadata"]["namespace"]), str(pod["metadata"]["name"])
        super().__init__(name=f"{namespace}/{name}", daemon=True)
        self.api = api
        self.image_path = image_path
        self.pod = pod
        self.status_path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"
        self.root = workdir / "pods" / f"{namespace}_{name}_{pod['metadata']['uid'][:8]}"
        self.log_path = pod_log_path(workdir, namespace, name)
        self.grace: int | None = None
        self._terminating = threading.Event()

    def terminate(self, grace: int) -> None:
        """SIGTERM, `grace` seconds, SIGKILL; a shorter grace given later shortens the wait."""
        self.grace = grace if self.grace is None else min(self.grace, grace)
        self._terminating.set()

    def run(self) -> None:
        try:
            while not self._terminating.is_set():  # deleted before it ran: the executor confirms
                try:
                    pod, volumes = self._prepare()
                except API_FAILURES as error:  # a missing object, a busy API: retried
                    log.warning("pod %s: %s", self.name, error)
                    self._terminating.wait(REFRESH_SECONDS)
                    continue
                self._execute(pod, volumes)
                return
        except Exception as error:  # a pod this executor cannot run fails, with the reason
            log.exception("pod %s: cannot run", self.name)
            self._report("Failed", None, reason="ExecutorError", message=str(error))

    def _prepare(self) -> tuple[Pod, list[ConfigMapVolume]]:
        spec = self.pod["spec"]
        container = spec["containers"][0]
        if len(spec["containers"]) > 1 or spec.get("initContainers") or "command" not in container:
            raise ValueError("only one container, with a command, is modelled")
        shutil.rmtree(self.root, ignore_errors=True)
        mounts, volumes = mount_volumes(self.api, self.pod, container, self.root)
        pod = Pod(root=self.root, mounts=mounts, env={}, command=[], working_dir=self.root)
        lookup = api_lookup(self.api, str(self.pod["metadata"]["namespace"]))
        env = container_env(container, lookup, {"PATH": self.image_path})
        # Paths in env values name places in the pod: mapped into its root. PATH names the
        # image's directories, which the image's stand-in provides.
        pod.env = {k: v if k == "PATH" else translate_path_value(v, pod) for k, v in env.items()}
        argv = [*container["command"], *(container.get("args") or [])]
        pod.command = [expand(str(arg), pod.env) for arg in argv]
        # Resolved on the container's PATH; not found, Popen fails and so does the pod.
        pod.command[0] = shutil.which(pod.command[0], path=pod.env["PATH"]) or pod.command[0]
        pod.working_dir = pod.host_path(str(container.get("workingDir") or "/"))
        pod.working_dir.mkdir(parents=True, exist_ok=True)
        return pod, volumes

    def _execute(self, pod: Pod, volumes: list[ConfigMapVolume]) -> None:
        with self.log_path.open("ab") as output:
            process = subprocess.Popen(
                pod.command,
                env=pod.env,
                cwd=pod.working_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group is the container: SIGTERM goes to the main process
                # (the runtime signals PID 1), SIGKILL to the whole group.
                start_new_session=True,
            )
        started = now()
        log.info("pod %s: started pid %d: %s", self.name, process.pid, " ".join(pod.command))
        self._report("Running", {"running": {"startedAt": started}})
        refreshed = time.monotonic()
        while process.poll() is None and not self._terminating.wait(TICK_SECONDS):
            if time.monotonic() - refreshed < REFRESH_SECONDS:
                continue
            refreshed = time.monotonic()
            for volume in volumes:
                try:
                    if volume.refresh():
                        log.info("pod %s: refreshed configMap %s", self.name, volume.name)
                except (*API_FAILURES, OSError, KeyError) as error:  # it stays as it was
                    log.warning("pod %s: refresh: %s", self.name, error)
        if process.poll() is None:
            self._kill(process)
        code = process.wait()
        with contextlib.suppress(ProcessLookupError):  # nothing it started outlives it
            os.killpg(process.pid, signal.SIGKILL)
        log.info("pod %s: exited %d", self.name, code)
        terminated = {"exitCode": code if code >= 0 else 128 - code, "startedAt": started,
                      "finishedAt": now(), "reason": "Error" if code else "Completed"}  # fmt: skip
        self._report("Succeeded" if code == 0 else "Failed", {"terminated": terminated})

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        grace = self.grace or 0
        log.info("pod %s: SIGTERM, grace %ds", self.name, grace)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(TICK_SECONDS)
            deadline = min(deadline, time.monotonic() + (self.grace or 0))
        if process.poll() is None:
            log.info("pod %s: SIGKILL after %ds", self.name, grace)
            os.killpg(process.pid, signal.SIGKILL)

    def _report(self, phase: str, state: dict[str, Any] | None, **extra: str) -> None:
        """The pod's phase and its container's state, as the kubelet reports them."""
        status: dict[str, Any] = {"phase": phase, **extra}
        if state is not None:
            container = self.pod["spec"]["containers"][0]
            status["containerStatuses"] = [
                {"name": container["name"], "image": container.get("image", ""),
                 "ready": "running" in state, "state": state}
            ]  # fmt: skip
        for attempt in (1, 2, 3):
            try:
                self.api.request("PATCH", self.status_path, {"status": status})
                return
            except API_FAILURES as error:
                if isinstance(error, ApiError) and error.status == 404:
                    return  # the pod is gone
                if attempt == 3:
                    raise
                time.sleep(1.0)  # a busy API server: the status must not be lost
