"""The executor's Node and its Lease: registered Ready, kept Ready, removed at the end."""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devtools.pods.kube import (
    API_FAILURES,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    Api,
    ApiError,
    micro_now,
    now,
)

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
NODE_STATUS_SECONDS = 60.0
_HEALTHY = (
    ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ("Ready", "True", "KubeletReady"),
)


@dataclass
class Node:
    """A Node object in the API server with this machine's address, and its heartbeat."""

    api: Api
    name: str
    capacity: Mapping[str, str]
    host_ip: str

    @property
    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"

    def _status(self) -> dict[str, Any]:
        stamp, machine = now(), platform.machine()
        conditions = [
            {"type": kind, "status": status, "reason": reason, "lastHeartbeatTime": stamp,
             "lastTransitionTime": stamp, "message": "pod executor (stands in for the kubelet)"}
            for kind, status, reason in _HEALTHY
        ]  # fmt: skip
        info = {
            "machineID": "", "systemUUID": "", "bootID": "", "kubeletVersion": "",
            "kubeProxyVersion": "", "kernelVersion": platform.release(),
            "osImage": "pods.executor", "containerRuntimeVersion": "pods.executor://local-processes",
            "operatingSystem": "linux",
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        }  # fmt: skip
        addresses = [{"type": "InternalIP", "address": self.host_ip},
                     {"type": "Hostname", "address": self.name}]  # fmt: skip
        return {"capacity": dict(self.capacity), "allocatable": dict(self.capacity),
                "conditions": conditions, "addresses": addresses, "nodeInfo": info}  # fmt: skip

    def register(self) -> None:
        """Create the Node (or, left over from an earlier run, re-mark it Ready) and its Lease."""
        status = self._status()
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": status["nodeInfo"]["architecture"]}  # fmt: skip
        node = {"apiVersion": "v1", "kind": "Node", "spec": {}, "status": status,
                "metadata": {"name": self.name, "labels": labels}}  # fmt: skip
        try:
            created = self.api.request("POST", "/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            created = self._patch_status()
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name,
                 "uid": created["metadata"]["uid"]}  # fmt: skip
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE,
                         "ownerReferences": [owner]},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": micro_now()},
        }  # fmt: skip
        try:
            self.api.request("POST", self._lease_path.rsplit("/", 1)[0], lease)
        except ApiError as error:
            if error.status != 409:
                raise
            self._renew_lease()
        log.info("node %s registered (Ready)", self.name)

    def _patch_status(self) -> dict[str, Any]:
        path, body = f"/api/v1/nodes/{self.name}/status", {"status": self._status()}
        return self.api.request("PATCH", path, body, content_type=STRATEGIC_PATCH)

    def _renew_lease(self) -> None:
        body = {"spec": {"renewTime": micro_now(), "holderIdentity": self.name}}
        self.api.request("PATCH", self._lease_path, body, content_type=MERGE_PATCH)

    def heartbeat(self, stopping: threading.Event) -> None:
        """Until `stopping`: the node lifecycle controller marks a node NotReady (and evicts)
        once neither its Lease nor its Ready condition moved for its grace period (40-50 s)."""
        last_status = time.monotonic()
        while not stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_SECONDS:
                    self._patch_status()
                    last_status = time.monotonic()
            except (*API_FAILURES, OSError) as error:
                log.warning("heartbeat: %s", error)

    def remove(self) -> None:
        """Delete the Lease and the Node (best effort: the node is going away)."""
        for path in (self._lease_path, f"/api/v1/nodes/{self.name}"):
            with contextlib.suppress(*API_FAILURES, OSError):
                self.api.request("DELETE", path)
