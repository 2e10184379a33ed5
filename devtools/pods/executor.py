"""A pod executor standing in for the kubelet (test infrastructure): a Node, kept Ready by
its Lease, whose pods run as local processes as their specs say (worker.py): configMap
volumes and emptyDirs (volumes.py), env (env.py), command + args from workingDir in the
image stand-in; status reported; a deleted pod gets SIGTERM, its grace period, SIGKILL,
then the kubelet's final delete. Output: `<workdir>/pods/<namespace>_<name>.log`.

Not modelled: more than one container, init containers, other volume and env sources
(these fail the pod), subPath, item modes, restarts, probes, securityContext (Pod Security
admission still checks it), resources, networking (loopback is this machine's).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.pods.kube import API_FAILURES, Api, ApiError, now
from devtools.pods.worker import PodWorker

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
# The node lifecycle controller marks a node NotReady once its Lease has not moved for
# its grace period (50 s by default); the kubelet renews it every 10 s.
HEARTBEAT_SECONDS = 10.0
CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "50", "ephemeral-storage": "20Gi"}


@dataclass
class Executor:
    """One Node and the pods bound to it. `run()` blocks until `stop()`."""

    api: Api
    node_name: str
    workdir: Path
    image_path: str
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _workers: dict[str, PodWorker] = field(default_factory=dict, init=False)
    _confirmed: set[str] = field(default_factory=set, init=False)

    def run(self) -> None:
        """Register the node, then sync pods every POLL_SECONDS until stop()."""
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._register()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        try:
            while not self._stopping.wait(POLL_SECONDS):
                try:
                    self.sync_once()
                except API_FAILURES as error:
                    log.warning("sync: %s", error)
        finally:
            # The node goes away: every container stops at once, then the Node and Lease.
            for worker in self._workers.values():
                worker.terminate(0)
            for worker in self._workers.values():
                worker.join(timeout=10)
            for path in (f"{LEASES}/{self.node_name}", f"/api/v1/nodes/{self.node_name}"):
                with contextlib.suppress(*API_FAILURES):
                    self.api.request("DELETE", path)
            log.info("node %s: stopped", self.node_name)

    def stop(self) -> None:
        self._stopping.set()

    def _register(self) -> None:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": now(), "lastTransitionTime": now()}  # fmt: skip
        status = {"capacity": CAPACITY, "allocatable": CAPACITY, "conditions": [ready]}
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"}
        metadata = {"name": self.node_name, "labels": labels}
        self.api.request("POST", "/api/v1/nodes", {"metadata": metadata, "status": status})
        lease = {"metadata": {"name": self.node_name}, "spec": self._lease_spec()}
        self.api.request("POST", LEASES, lease)
        log.info("node %s registered (Ready)", self.node_name)

    def _lease_spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": now()}

    def _heartbeat(self) -> None:
        path = f"{LEASES}/{self.node_name}"
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.api.request("PATCH", path, {"spec": self._lease_spec()})
            except API_FAILURES as error:
                log.warning("heartbeat: %s", error)

    def sync_once(self) -> None:
        """One pass over the pods bound to this node: start new ones, stop deleted ones and
        confirm their deletion once stopped."""
        query = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        pods: list[dict[str, Any]] = self.api.get("/api/v1/pods", query=query)["items"]
        for pod in pods:
            metadata, phase = pod["metadata"], pod["status"]["phase"]
            worker, deleting = self._workers.get(metadata["uid"]), "deletionTimestamp" in metadata
            if worker is None and not deleting and phase not in ("Succeeded", "Failed"):
                worker = PodWorker(self.api, self.image_path, self.workdir, pod)
                self._workers[metadata["uid"]] = worker
                log.info("pod %s: bound here, starting", worker.name)
                worker.start()
            elif deleting and worker is not None and worker.is_alive():
                worker.terminate(int(metadata["deletionGracePeriodSeconds"]))
            elif deleting and metadata["uid"] not in self._confirmed:
                self._confirm_deletion(metadata)

    def _confirm_deletion(self, metadata: dict[str, Any]) -> None:
        """The kubelet's last word on a deleted pod whose container has stopped (or never
        ran): DELETE with grace 0 and the pod's UID as precondition."""
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        delete = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                  "preconditions": {"uid": metadata["uid"]}}  # fmt: skip
        try:
            self.api.request("DELETE", path, delete)
        except ApiError as error:
            if error.status not in (404, 409):  # gone, or a new pod under the same name
                raise
        self._confirmed.add(metadata["uid"])
        log.info("pod %s/%s: deletion confirmed", metadata["namespace"], metadata["name"])
