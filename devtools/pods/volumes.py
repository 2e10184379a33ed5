"""A pod's configMap and secret volumes, written from the API as the kubelet writes them."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.pods.kube import METADATA_ONLY, Api
from devtools.pods.runner import configmap_files

_DATA_DIR = "..data"


class PodConfigError(Exception):
    """Something the pod needs is missing (a ConfigMap, Secret, key): retried, as the
    kubelet retries (CreateContainerConfigError)."""


class PodUnsupported(Exception):
    """The pod asks for something this executor does not model: the pod fails at once."""


def atomic_write(directory: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Replace a volume's content the way the kubelet does, so a reader never sees a mix.

    The files go into a new hidden timestamped dir; `..data` is pointed at it with one
    rename(2); each top-level name is a symlink through `..data`; the old dir is removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(4)
    payload = directory / stamp
    payload.mkdir()
    for relative, (content, mode) in files.items():
        target = payload / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    data_link = directory / _DATA_DIR
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    temporary = directory / "..data_tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(stamp)
    temporary.replace(data_link)
    tops = {Path(relative).parts[0] for relative in files}
    for name in tops:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path(_DATA_DIR) / name)
    for entry in directory.iterdir():
        if entry.name.startswith("..") or entry.name in tops:
            continue
        if entry.is_symlink():
            entry.unlink()  # a key the new content no longer has
    if previous is not None and previous != stamp:
        shutil.rmtree(directory / previous, ignore_errors=True)


class SourceVolume:
    """A configMap or secret volume, materialised from the API and kept up to date."""

    def __init__(self, api: Api, namespace: str, volume: dict[str, Any], host: Path) -> None:
        self.api = api
        self.kind = "configMap" if "configMap" in volume else "secret"
        self.source: dict[str, Any] = volume[self.kind]
        self.name = str(self.source.get("name" if self.kind == "configMap" else "secretName"))
        plural = "configmaps" if self.kind == "configMap" else "secrets"
        self.path = f"/api/v1/namespaces/{namespace}/{plural}/{self.name}"
        self.host = host
        self.resource_version: str | None = None

    def _files(self, obj: dict[str, Any] | None) -> dict[str, tuple[bytes, int]]:
        optional = bool(self.source.get("optional"))
        if obj is None:
            if optional:
                return {}
            raise PodConfigError(f'{self.kind} "{self.name}" not found')
        if self.kind == "secret":
            obj = {"binaryData": obj.get("data") or {}}  # already base64, like binaryData
        items = self.source.get("items")
        try:
            contents = configmap_files(obj, items)
        except KeyError as error:
            if optional:
                contents = {}
            else:
                raise PodConfigError(f'{self.kind} "{self.name}" has no key {error}') from None
        default_mode = int(self.source.get("defaultMode", 0o644))
        modes = {item["path"]: int(item.get("mode", default_mode)) for item in items or []}
        return {path: (data, modes.get(path, default_mode)) for path, data in contents.items()}

    def materialise(self) -> None:
        obj = self.api.get_optional(self.path)
        self.resource_version = obj["metadata"]["resourceVersion"] if obj else None
        atomic_write(self.host, self._files(obj))

    def refresh(self) -> bool:
        """Rewrite the volume if the object changed; True when it did."""
        metadata = self.api.get_optional(self.path, accept=METADATA_ONLY)
        version = metadata["metadata"]["resourceVersion"] if metadata else None
        if version == self.resource_version:
            return False
        self.materialise()
        return True


def mount_volumes(
    api: Api, pod: dict[str, Any], container: dict[str, Any], root: Path
) -> tuple[dict[str, Path], list[SourceVolume]]:
    """Each volumeMount's host dir under `root` (by mount path), and the volumes to refresh:
    configMap and secret volumes written from the API, emptyDirs created."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    sources: list[SourceVolume] = []
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodUnsupported(f"volumeMount {mount['name']}: subPath is not modelled")
        volume = volumes[mount["name"]]
        host = root / "volumes" / mount["name"]
        mounts[str(mount["mountPath"])] = host
        if "configMap" in volume or "secret" in volume:
            source = SourceVolume(api, str(pod["metadata"]["namespace"]), volume, host)
            source.materialise()
            sources.append(source)
        elif "emptyDir" in volume:
            host.mkdir(parents=True, exist_ok=True)
        else:
            raise PodUnsupported(f"volume {mount['name']}: only configMap, secret and "
                                 "emptyDir are modelled")  # fmt: skip
    return mounts, sources
