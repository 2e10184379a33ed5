"""Run a rendered CronJob's container as a local process, as its pod spec says: ConfigMap
volumes written (read-only) under a temp root at their mount paths, emptyDirs as writable
dirs, env as the kubelet builds it (env.py; Secrets given by the test), and every absolute
path in the env mapped into the temp root. Also the image stand-in's virtualenv."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from devtools.paths import ROOT
from devtools.pods.env import container_env
from devtools.pods.volumes import configmap_files


def pinned(requirement: str) -> str:
    """The `name==version` line of requirements.txt, so the venv matches the image's pydantic."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == requirement.lower():
            return line.strip()
    raise KeyError(requirement)


def make_image_like_venv(target: Path) -> Path:
    """A virtualenv with nothing but pydantic: what the agent image offers the jobs.

    pydantic and what it requires are copied, file by file as their RECORDs list them, from
    the environment running this (it installed the pinned pydantic from requirements.txt):
    no pip, no network, about a second instead of the ten ensurepip + pip install took.
    """
    venv.EnvBuilder(with_pip=False, clear=True).create(target)
    # The venv runs this interpreter, so its site-packages is the usual place under it.
    site = target / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    version = pinned("pydantic").split("==")[1]
    found = metadata.version("pydantic")
    if found != version:
        raise RuntimeError(f"found pydantic {found} here, requirements.txt pins {version}")
    for dist in _with_requirements("pydantic"):
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or "__pycache__" in file.parts or not source.is_file():
                continue  # console scripts outside site-packages, bytecode caches
            destination = site / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target / "bin" / "python"


def _with_requirements(name: str) -> list[metadata.Distribution]:
    """The installed distribution `name` and everything it requires (no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [name]
    while pending:
        current = pending.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen:
            continue
        dist = metadata.distribution(current)
        seen[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            pending.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return list(seen.values())


@dataclass
class Pod:
    """A materialised pod: where each mount lives on this machine, and the container's env."""

    root: Path
    mounts: dict[str, Path]
    env: dict[str, str]
    command: list[str]
    working_dir: Path

    def host_path(self, pod_path: str) -> Path:
        best = max(
            (m for m in self.mounts if pod_path == m or pod_path.startswith(m + "/")),
            key=len,
            default=None,
        )
        if best is None:
            return self.root / pod_path.lstrip("/")
        return self.mounts[best] / os.path.relpath(pod_path, best)

    def run(
        self,
        python: Path,
        overrides: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        command = list(self.command)
        if command[0] in ("python3", "python"):
            command[0] = str(python)
        env = {"PATH": f"{python.parent}:/usr/bin:/bin", **self.env, **(overrides or {})}
        return subprocess.run(
            command,
            env=env,
            cwd=self.working_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def translate_path_value(value: str, pod: Pod) -> str:
    """Absolute paths (and ':'-joined lists of them) in env values, mapped into the temp root."""
    if not value.startswith("/"):
        return value
    return ":".join(
        str(pod.host_path(part)) if part.startswith("/") else part for part in value.split(":")
    )


def _write_read_only(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def materialise(
    pod_spec: dict[str, Any],
    configmaps: Mapping[str, dict[str, Any]],
    root: Path,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> Pod:
    (container,) = pod_spec["containers"]
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    pod = Pod(root=root, mounts={}, env={}, command=[], working_dir=root)
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        host = root / mount["mountPath"].lstrip("/")
        host.mkdir(parents=True, exist_ok=True)
        pod.mounts[mount["mountPath"]] = host
        if "configMap" in volume:
            source = volume["configMap"]
            for relative, content in configmap_files(
                configmaps[source["name"]], source.get("items")
            ).items():
                _write_read_only(host / relative, content)
        elif "emptyDir" not in volume:
            raise ValueError(f"volume {mount['name']}: only configMap and emptyDir are modelled")
        if mount.get("readOnly"):
            for directory in sorted((p for p in host.rglob("*") if p.is_dir()), reverse=True):
                directory.chmod(0o555)
            host.chmod(0o555)

    def lookup(plural: str, name: str) -> Mapping[str, str]:
        return (secrets or {})[name] if plural == "secrets" else configmaps[name].get("data") or {}

    env = container_env(container, lookup, {})
    pod.env = {name: translate_path_value(value, pod) for name, value in env.items()}
    pod.command = list(container["command"]) + list(container.get("args", []))
    pod.working_dir = pod.host_path(container.get("workingDir", "/"))
    return pod
