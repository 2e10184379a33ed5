"""A container's env as the kubelet assembles it, over the stand-in for the image's ENV."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.pods.kube import Api
from devtools.pods.volumes import PodConfigError, PodUnsupported

_REFERENCE = re.compile(r"\$\$|\$\(([^()]*)\)")


@dataclass(frozen=True)
class ImageEnv:
    """The stand-in for the container image's filesystem and ENV: a bin dir first on PATH."""

    bin_dir: Path

    @property
    def path(self) -> str:
        return f"{self.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    @classmethod
    def agent_image(cls, directory: Path, python: Path, bd: Path) -> ImageEnv:
        """The agent image's tools: `python3`/`python` run the given virtualenv's python (an
        exec wrapper, not a symlink: a symlinked venv python would not find its
        pyvenv.cfg and would run the base interpreter with its site-packages), and `bd`."""
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("python3", "python"):
            wrapper = bin_dir / name
            wrapper.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
            wrapper.chmod(0o755)
        link = bin_dir / "bd"
        link.unlink(missing_ok=True)
        link.symlink_to(bd)
        return cls(bin_dir)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, `$$` is a literal `$`, and
    an undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def _field_value(pod: dict[str, Any], path: str) -> str:
    metadata, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.podIP": status.get("podIP") or "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodUnsupported(f"fieldRef {path!r} is not modelled")


class EnvBuilder:
    """The container's env as the kubelet assembles it, sources read from the API."""

    def __init__(self, api: Api, pod: dict[str, Any]) -> None:
        self.api = api
        self.pod = pod
        self.namespace = str(pod["metadata"]["namespace"])
        self._cache: dict[tuple[str, str], dict[str, Any] | None] = {}

    def _data(self, plural: str, name: str, optional: bool) -> dict[str, str] | None:
        if (plural, name) not in self._cache:
            path = f"/api/v1/namespaces/{self.namespace}/{plural}/{name}"
            self._cache[plural, name] = self.api.get_optional(path)
        obj = self._cache[plural, name]
        if obj is None:
            if optional:
                return None
            raise PodConfigError(f'{_kind(plural)} "{name}" not found')
        if plural == "secrets":
            return {
                # Secret values are bytes; env takes them as they are (Popen re-encodes).
                k: base64.b64decode(v).decode(errors="surrogateescape")
                for k, v in (obj.get("data") or {}).items()
            }
        return dict(obj.get("data") or {})

    def _key(self, plural: str, ref: dict[str, Any]) -> str | None:
        optional = bool(ref.get("optional"))
        data = self._data(plural, str(ref["name"]), optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise PodConfigError(
                f'couldn\'t find key {ref["key"]} in {_kind(plural)} "{ref["name"]}"'
            )
        return data[ref["key"]]

    def build(self, container: dict[str, Any], image: ImageEnv) -> dict[str, str]:
        env: dict[str, str] = {"PATH": image.path, "HOSTNAME": str(self.pod["metadata"]["name"])}
        for source in container.get("envFrom") or []:
            prefix = str(source.get("prefix", ""))
            if "configMapRef" in source:
                ref, plural = source["configMapRef"], "configmaps"
            elif "secretRef" in source:
                ref, plural = source["secretRef"], "secrets"
            else:
                raise PodUnsupported(f"envFrom {source} is not modelled")
            data = self._data(plural, str(ref["name"]), bool(ref.get("optional")))
            for key, text in (data or {}).items():
                env[prefix + key] = text
        for item in container.get("env") or []:
            name = str(item["name"])
            if "valueFrom" not in item:
                env[name] = expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self._key("secrets", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self._key("configmaps", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = _field_value(self.pod, str(source["fieldRef"]["fieldPath"]))
            else:
                raise PodUnsupported(f"env {name}: valueFrom {sorted(source)} is not modelled")
            if value is not None:
                env[name] = value
        return env


def _kind(plural: str) -> str:
    return "configmap" if plural == "configmaps" else "secret"
