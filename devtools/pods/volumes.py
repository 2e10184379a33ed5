"""A pod's volumes: configMap volumes written from the API as the kubelet writes them,
and rewritten while the pod runs when their ConfigMap changes; emptyDirs."""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.pods.kube import METADATA_ONLY, Api


def configmap_files(configmap: dict[str, Any], items: list[Any] | None) -> dict[str, bytes]:
    """A ConfigMap volume's files: every key of data and binaryData, or only `items`
    (key -> relative path). A missing item key raises KeyError."""
    everything = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
    everything |= {k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()}
    return {item["path"]: everything[item["key"]] for item in items} if items else everything


def atomic_write(directory: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Replace a volume's content the way the kubelet does, so a reader never sees a mix:
    the files go into a new hidden timestamped dir, `..data` is pointed at it with one
    rename(2), each top-level name is a symlink through `..data`, the old dir is removed."""
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + secrets.token_hex(4)
    (directory / stamp).mkdir(parents=True)
    for relative, (content, mode) in files.items():
        target = directory / stamp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    data = directory / "..data"
    previous = os.readlink(data) if data.is_symlink() else None
    temporary = directory / "..data_tmp"
    temporary.symlink_to(stamp)
    temporary.replace(data)
    tops = {Path(relative).parts[0] for relative in files}
    for entry in directory.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()  # a key the new content no longer has
    for name in tops:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    if previous is not None:
        shutil.rmtree(directory / previous)


class ConfigMapVolume:
    """A configMap volume (every file in its defaultMode), kept up to date by `refresh`."""

    def __init__(self, api: Api, namespace: str, source: dict[str, Any], host: Path) -> None:
        self.api = api
        self.source = source
        self.name = str(source["name"])
        self.path = f"/api/v1/namespaces/{namespace}/configmaps/{self.name}"
        self.host = host
        self.version = ""

    def refresh(self) -> bool:
        """(Re)write the volume if its ConfigMap is new or changed; True when it was."""
        metadata = self.api.get(self.path, accept=METADATA_ONLY)["metadata"]
        if metadata["resourceVersion"] == self.version:
            return False
        configmap = self.api.get(self.path)
        mode = int(self.source.get("defaultMode", 0o644))
        files = configmap_files(configmap, self.source.get("items"))
        atomic_write(self.host, {path: (data, mode) for path, data in files.items()})
        self.version = str(configmap["metadata"]["resourceVersion"])
        return True


def mount_volumes(
    api: Api, pod: dict[str, Any], container: dict[str, Any], root: Path
) -> tuple[dict[str, Path], list[ConfigMapVolume]]:
    """Each volumeMount's host dir under `root` (by mount path), and its configMap volumes."""
    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    configmaps: list[ConfigMapVolume] = []
    for mount in container.get("volumeMounts") or []:
        volume, host = volumes[mount["name"]], root / "volumes" / mount["name"]
        mounts[str(mount["mountPath"])] = host
        host.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            namespace = pod["metadata"]["namespace"]
            configmaps.append(ConfigMapVolume(api, namespace, volume["configMap"], host))
            configmaps[-1].refresh()
        elif "emptyDir" not in volume:
            raise ValueError(f"volume {mount['name']}: only configMap and emptyDir are modelled")
    return mounts, configmaps
