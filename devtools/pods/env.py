"""A container's env as the kubelet assembles it, over the image stand-in's PATH."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devtools.pods.kube import Api

_REFERENCE = re.compile(r"\$\$|\$\(([^()]*)\)")

Lookup = Callable[[str, str], Mapping[str, str]]
"""(`configmaps` or `secrets`, name) -> that object's data; KeyError when it is missing."""


def image_path(directory: Path, python: Path, bd: Path) -> str:
    """PATH in the stand-in for the agent image: `bd` (a link in `directory`), the
    virtualenv's `python3`, then this machine's /usr/bin and /bin."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bd").unlink(missing_ok=True)
    (directory / "bd").symlink_to(bd)
    return f"{directory}:{python.parent}:/usr/local/bin:/usr/bin:/bin"


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, `$$` is a literal `$`, and
    an undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def container_env(
    container: dict[str, Any], lookup: Lookup, image_env: Mapping[str, str]
) -> dict[str, str]:
    """The image's env, then envFrom (configMapRef, prefix), then env (a value with its
    `$(VAR)` references expanded, or a secretKeyRef), each overriding the one before. Any
    other source is a KeyError naming it."""
    env = dict(image_env)
    for source in container.get("envFrom") or []:
        for key, value in lookup("configmaps", source["configMapRef"]["name"]).items():
            env[source.get("prefix", "") + key] = value
    for item in container.get("env") or []:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = lookup("secrets", ref["name"])[ref["key"]]
        else:
            env[item["name"]] = expand(str(item.get("value", "")), env)
    return env


def api_lookup(api: Api, namespace: str) -> Lookup:
    """ConfigMap and Secret data from the API server (an ApiError when one is missing)."""

    def lookup(plural: str, name: str) -> Mapping[str, str]:
        found = api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        data: dict[str, str] = found.get("data") or {}
        if plural == "configmaps":
            return data
        # Secret values are bytes, taken as they are (Popen encodes them back).
        return {k: base64.b64decode(v).decode(errors="surrogateescape") for k, v in data.items()}

    return lookup
