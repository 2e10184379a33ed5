"""The optional NetworkPolicy's egress rules: who each configured host name reaches."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pulumi_kubernetes.meta.v1 import LabelSelectorArgs
from pulumi_kubernetes.networking.v1 import (
    IPBlockArgs,
    NetworkPolicyEgressRuleArgs,
    NetworkPolicyPeerArgs,
    NetworkPolicyPortArgs,
)

from components.config import BeadsAutoDispatchArgs

# BeadBoard's Service listens on 80 and forwards to the Next.js server on 3000. A
# NetworkPolicy is enforced after the Service's address translation, on the packet as it
# reaches the pod, so it must name the pod's port (3000); naming 80 would block BeadBoard.
BEADBOARD_POD_PORT = 3000
# Every namespace carries this label (Kubernetes >= 1.21), so it can select one by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_NAMESPACE = "kube-system"


def service_namespace(host: str, own_namespace: str) -> str | None:
    """The namespace of an in-cluster Service name (`svc`, `svc.ns.svc[.cluster.local]`)."""
    parts = host.rstrip(".").split(".")
    if len(parts) == 1:
        return own_namespace
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[1]
    return None


def destination(host: str, own_namespace: str) -> NetworkPolicyPeerArgs:
    """Who a host name reaches, as a NetworkPolicy peer.

    - a Service name: any pod of its namespace. The selector stops at the namespace because
      the pods' labels belong to other deployments (Dolt, BeadBoard, the agent service) and
      are not part of this project's contract; the port rule next to it does the narrowing.
    - an IP address: that address only (useful for out-of-cluster servers; a Service's
      cluster IP never matches, the policy sees the pod behind it).
    - any other name is outside the cluster: any address (on the one port allowed).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return NetworkPolicyPeerArgs(
            ip_block=IPBlockArgs(cidr=f"{address}/{address.max_prefixlen}")
        )
    namespace = service_namespace(host, own_namespace)
    if namespace is None:
        return NetworkPolicyPeerArgs(ip_block=IPBlockArgs(cidr="0.0.0.0/0"))
    if namespace == own_namespace:
        return NetworkPolicyPeerArgs(pod_selector=LabelSelectorArgs())
    return NetworkPolicyPeerArgs(
        namespace_selector=LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: namespace}),
        pod_selector=LabelSelectorArgs(),
    )


def url_port(url: str) -> int:
    parsed = urlsplit(url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def egress_rules(settings: BeadsAutoDispatchArgs) -> list[NetworkPolicyEgressRuleArgs]:
    """DNS, Dolt, BeadBoard and (when its URL is set) the agent service; nothing else."""
    ns = settings.namespace
    rules = [
        NetworkPolicyEgressRuleArgs(
            to=[
                NetworkPolicyPeerArgs(
                    namespace_selector=LabelSelectorArgs(
                        match_labels={NAMESPACE_NAME_LABEL: DNS_NAMESPACE}
                    )
                )
            ],
            ports=[
                NetworkPolicyPortArgs(protocol="UDP", port=53),
                NetworkPolicyPortArgs(protocol="TCP", port=53),
            ],
        ),
        # Assumes Dolt's pod listens on the port its Service exposes (3306 in production).
        NetworkPolicyEgressRuleArgs(
            to=[destination(settings.dolt_host, ns)],
            ports=[NetworkPolicyPortArgs(protocol="TCP", port=settings.dolt_port)],
        ),
    ]
    board_host = urlsplit(settings.beadboard_url).hostname or ""
    rules.append(
        NetworkPolicyEgressRuleArgs(
            to=[destination(board_host, ns)],
            ports=[
                NetworkPolicyPortArgs(
                    protocol="TCP",
                    # Outside the cluster there is no Service in between: the URL's port.
                    port=BEADBOARD_POD_PORT
                    if service_namespace(board_host, ns) is not None
                    else url_port(settings.beadboard_url),
                )
            ],
        )
    )
    if settings.agent_health_url:
        # Assumes the agent Service's port equals its pod's (the URL names the Service's).
        rules.append(
            NetworkPolicyEgressRuleArgs(
                to=[destination(urlsplit(settings.agent_health_url).hostname or "", ns)],
                ports=[
                    NetworkPolicyPortArgs(protocol="TCP", port=url_port(settings.agent_health_url))
                ],
            )
        )
    return rules
