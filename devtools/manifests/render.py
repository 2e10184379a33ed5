"""Write the manifests a deploy would apply as Kubernetes YAML, one file per resource.

    python -m devtools.manifests OUT_DIR

renders the Pulumi program under Pulumi's mocks (devtools/manifests/mocks.py: no cluster, no
Pulumi CLI) once per configuration in CONFIGS, into OUT_DIR/<configuration>/. Security
scanners (tools/scan-manifests.sh) read these files; each configuration is its own
directory because graph checks (e.g. "every pod is covered by a NetworkPolicy") must not
see resources of another configuration.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from devtools.manifests.mocks import Recorder, render_program

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "network-policy": {
        "networkPolicyEnabled": "true",
        "agentHealthUrl": "http://claude-agent-service.beads-server.svc.cluster.local/health",
        "doltPasswordSecretName": "dolt-credentials",
    },
    # A digest-pinned image: the image checks must then pass without any exception.
    "pinned-image": {"image": "registry.example/claude-agent-service:1.4.2@sha256:" + "0" * 64},
}

# "kubernetes:batch/v1:CronJob" -> ("batch/v1", "CronJob"); core/v1 is plain "v1".
_TYPE_TOKEN = re.compile(r"^kubernetes:(?P<group>[^:]+):(?P<kind>[A-Za-z]+)$")


def plain(value: Any) -> Any:
    """Pulumi's mocks pass numbers through protobuf as floats: 53.0 is the port 53."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def manifests(rendered: Recorder) -> list[dict[str, Any]]:
    """Every Kubernetes resource of a render, as the object the API server would receive."""
    documents = []
    for resource in rendered.resources:
        match = _TYPE_TOKEN.match(resource.type)
        if match is None:
            continue  # the component itself, not a Kubernetes object
        group = match["group"].removeprefix("core/")
        body = plain(resource.inputs)
        documents.append({"apiVersion": group, "kind": match["kind"], **body})
    return documents


def write(out_dir: Path, configs: dict[str, dict[str, str]] = CONFIGS) -> list[Path]:
    written = []
    for config_name, config in configs.items():
        directory = out_dir / config_name
        directory.mkdir(parents=True, exist_ok=True)
        for document in manifests(render_program(config)):
            path = directory / f"{document['kind'].lower()}-{document['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
            written.append(path)
    return written
