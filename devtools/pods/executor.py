"""A pod executor standing in for the kubelet: it runs the pods a real API server binds to
one Node as local processes, exactly as their pod specs say. Test infrastructure.

It registers a Node (Ready, with capacity) through the API server and keeps it Ready (a
Lease in kube-node-lease renewed every 10 s, the Ready condition re-stamped every minute;
node.py), polls the pods bound to it (`spec.nodeName`), and for each one (worker.py):

- materialises its volumes FROM THE API: ConfigMap and Secret volumes (items, modes,
  optional) written the way the kubelet writes them — a timestamped dir, a `..data`
  symlink swapped atomically, one symlink per top-level name — and refreshed while the pod
  runs (the ConfigMap's resourceVersion is checked every `refresh_seconds`); emptyDir
  (volumes.py);
- builds the container's env: the image's (PATH, HOSTNAME), envFrom (configMapRef,
  secretRef, prefix, optional), env (value, configMapKeyRef, secretKeyRef read from the
  API, fieldRef), `$(VAR)` references expanded as Kubernetes does, in env, command, args
  (env.py);
- runs command + args from workingDir, with every absolute path in env values mapped into
  the pod's own root dir (devtools/pods/runner.py's mapping: mounts at their mount paths);
- reports the pod's phase (Pending -> Running -> Succeeded/Failed) and the container's
  state and exit code in the pod's status;
- on deletion (the Job controller enforcing activeDeadlineSeconds, a CronJob's history
  limit, `kubectl delete pod`): SIGTERM to the container's main process, the pod's grace
  period (`deletionGracePeriodSeconds`, else terminationGracePeriodSeconds), then SIGKILL to
  its whole process group; then the terminal status and the final delete (grace 0, UID
  precondition), as the kubelet confirms a graceful deletion.

Output (stdout and stderr together) goes to `<workdir>/pods/<namespace>_<name>.log`
(`pod_log_path`); `kubectl logs` does not work (no kubelet API is served). The API server
is reached with a kubeconfig's token and CA (kube.py).

The image field is not pulled or unpacked: every container runs in the one "image" given
to the executor (`ImageEnv`): a bin dir first on PATH holding `python3`/`python` (a
virtualenv with only pydantic, like the agent image) and `bd`, over this machine's /usr/bin
and /bin. So a command the image would resolve from its own filesystem resolves here.

Not emulated: securityContext (processes run as the executor's user; Pod Security
admission still checks the spec in the API server), resource requests and limits,
read-only root filesystem, networking (the process shares this machine's network:
loopback services are reachable, cluster DNS and Service IPs are not), probes, init
containers, more than one container, restarts (restartPolicy other than Never fails the
pod), subPath mounts, volume types other than configMap/secret/emptyDir, service-link and
in-cluster API env vars, projected service-account tokens, termination messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.pods.env import ImageEnv
from devtools.pods.kube import API_FAILURES, STRATEGIC_PATCH, Api, ApiError
from devtools.pods.node import HEARTBEAT_SECONDS, Node
from devtools.pods.worker import PodWorker, grace_of

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Executor:
    """One Node and the pods bound to it. `run()` blocks until `stop()`."""

    api: Api
    node_name: str
    workdir: Path
    image: ImageEnv
    poll_seconds: float = 0.5
    refresh_seconds: float = 2.0
    capacity: Mapping[str, str] = field(
        default_factory=lambda: {"cpu": "4", "memory": "8Gi", "pods": "50",
                                 "ephemeral-storage": "20Gi"}
    )  # fmt: skip
    host_ip: str = "127.0.0.1"
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _workers: dict[str, PodWorker] = field(default_factory=dict, init=False, repr=False)
    _finished: set[str] = field(default_factory=set, init=False, repr=False)
    _confirmed: set[str] = field(default_factory=set, init=False, repr=False)

    def sync_once(self) -> None:
        """One pass over the pods bound to this node: start, stop, confirm deletions."""
        query = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        pods: list[dict[str, Any]] = self.api.get("/api/v1/pods", query=query).get("items") or []
        seen: set[str] = set()
        for pod in pods:
            metadata = pod["metadata"]
            uid = str(metadata["uid"])
            seen.add(uid)
            deleting = metadata.get("deletionTimestamp") is not None
            worker = self._workers.get(uid)
            if worker is not None and worker.is_alive():
                if deleting:
                    worker.terminate(grace_of(pod))
                continue
            if worker is not None:  # finished since the last pass
                del self._workers[uid]
                self._finished.add(uid)
            if uid in self._finished or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                self._finished.add(uid)
            elif not deleting:
                worker = self._workers[uid] = PodWorker(self, pod)
                log.info("pod %s/%s: bound here, starting", metadata["namespace"], metadata["name"])
                worker.start()
            if deleting and uid not in self._confirmed:
                self._confirm_deletion(pod)
        for uid, worker in list(self._workers.items()):
            if uid not in seen:  # deleted with grace 0 (forced) or its node binding lost
                worker.terminate(grace_of(worker.pod), vanished=True)
                if not worker.is_alive():
                    del self._workers[uid]
                    self._finished.add(uid)

    def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        """The kubelet's last word on a gracefully deleted pod: terminal status (if the
        container never ran), then DELETE with grace 0 and the pod's UID as precondition."""
        metadata = pod["metadata"]
        uid = str(metadata["uid"])
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        never_ran = {"phase": "Failed", "reason": "Terminated",
                     "message": "deleted before its container ran"}  # fmt: skip
        delete = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                  "preconditions": {"uid": uid}}  # fmt: skip
        try:
            if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                body = {"metadata": {"uid": uid}, "status": never_ran}
                self.api.request("PATCH", f"{path}/status", body, content_type=STRATEGIC_PATCH)
            self.api.request("DELETE", path, delete)
        except ApiError as error:
            if error.status not in (404, 409):
                raise
        self._confirmed.add(uid)
        log.info("pod %s/%s: deletion confirmed", metadata["namespace"], metadata["name"])

    def run(self) -> None:
        """Register the node, then sync pods every `poll_seconds` until stop()."""
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        node = Node(self.api, self.node_name, self.capacity, self.host_ip)
        node.register()
        heartbeat = threading.Thread(
            target=node.heartbeat, args=(self._stopping,), name="heartbeat", daemon=True
        )
        heartbeat.start()
        try:
            while not self._stopping.is_set():
                try:
                    self.sync_once()
                except (*API_FAILURES, OSError) as error:
                    log.warning("sync: %s", error)
                self._stopping.wait(self.poll_seconds)
        finally:
            # Stop every container at once (the node goes away), then remove Node and Lease.
            for worker in self._workers.values():
                worker.terminate(0, vanished=True)
            for worker in self._workers.values():
                worker.join(timeout=10)
            node.remove()
            log.info("node %s: stopped", self.node_name)
            heartbeat.join(timeout=HEARTBEAT_SECONDS + 5)

    def stop(self) -> None:
        self._stopping.set()
