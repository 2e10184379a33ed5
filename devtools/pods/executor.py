"""A pod executor standing in for the kubelet: it runs the pods a real API server binds to
one Node as local processes, exactly as their pod specs say. Test infrastructure.

It registers a Node (Ready, with capacity) through the API server and keeps it Ready (a
Lease in kube-node-lease renewed every 10 s, the Ready condition re-stamped every minute),
polls the pods bound to it (`spec.nodeName`), and for each one:

- materialises its volumes FROM THE API: ConfigMap and Secret volumes (items, modes,
  optional) written the way the kubelet writes them — a timestamped dir, a `..data`
  symlink swapped atomically, one symlink per top-level name — and refreshed while the pod
  runs (the ConfigMap's resourceVersion is checked every `refresh_seconds`); emptyDir;
- builds the container's env: the image's (PATH, HOSTNAME), envFrom (configMapRef,
  secretRef, prefix, optional), env (value, configMapKeyRef, secretKeyRef read from the
  API, fieldRef), `$(VAR)` references expanded as Kubernetes does, in env, command, args;
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
(`pod_log_path`); `kubectl logs` does not work (no kubelet API is served).

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

import base64
import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.pods.runner import Pod, configmap_files, translate_path_value

log = logging.getLogger("pods.executor")

TERMINAL_PHASES = ("Succeeded", "Failed")
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
NODE_STATUS_SECONDS = 60.0
DEFAULT_GRACE_SECONDS = 30
_JSON = "application/json"
_MERGE_PATCH = "application/merge-patch+json"
# Strategic merge: the pod's conditions merge by type (the scheduler's PodScheduled stays).
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_DATA_DIR = "..data"


# ---------------------------------------------------------------------------------------
# The API server, over HTTPS with a bearer token (stdlib only)
# ---------------------------------------------------------------------------------------


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


@dataclass(frozen=True)
class KubeConfig:
    """What a token-authenticated kubeconfig says: server, CA, bearer token."""

    server: str
    token: str
    ca_pem: str | None

    @classmethod
    def load(cls, path: Path) -> KubeConfig:
        """The current context of a kubeconfig (JSON or YAML) with token authentication."""
        document = yaml.safe_load(path.read_text())
        context_name = document.get("current-context")

        def named(section: str, name: str | None) -> dict[str, Any]:
            for entry in document.get(section) or []:
                if name is None or entry.get("name") == name:
                    value: dict[str, Any] = entry[section[:-1]]
                    return value
            raise ValueError(f"{path}: no {section[:-1]} {name!r}")

        context = named("contexts", context_name)
        cluster = named("clusters", context.get("cluster"))
        user = named("users", context.get("user"))
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        if not token:
            raise ValueError(f"{path}: the executor supports token authentication only")
        ca_pem: str | None = None
        if cluster.get("certificate-authority-data"):
            ca_pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
        elif cluster.get("certificate-authority"):
            ca_pem = Path(cluster["certificate-authority"]).read_text()
        return cls(server=str(cluster["server"]).rstrip("/"), token=str(token), ca_pem=ca_pem)


class Api:
    """JSON requests to the API server; one keep-alive connection per thread.

    http.client directly, so no proxy from the environment is ever used for loopback.
    """

    def __init__(self, config: KubeConfig, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(config.server)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"server must be https://host:port, got {config.server!r}")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._token = config.token
        self._timeout = timeout
        self._context = ssl.create_default_context(cadata=config.ca_pem)
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=self._timeout
            )
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = _JSON,
        accept: str = _JSON,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self._token}", "Accept": accept}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, url, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                # A kept-alive connection the server closed meanwhile: one fresh retry.
                self._drop_connection()
                if attempt == 2:
                    raise
        if response.status >= 400:
            raise ApiError(response.status, method, url, data.decode(errors="replace"))
        if not data:
            return {}
        decoded: dict[str, Any] = json.loads(data)
        return decoded

    def get(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.request("GET", path, **kwargs)

    def get_optional(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """GET, None for 404."""
        try:
            return self.get(path, **kwargs)
        except ApiError as error:
            if error.status == 404:
                return None
            raise


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    """A MicroTime (Lease renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_log_path(workdir: Path, namespace: str, name: str) -> Path:
    """Where the executor in `workdir` writes a pod's container output."""
    return workdir / "pods" / f"{namespace}_{name}.log"


# ---------------------------------------------------------------------------------------
# The "image": what every container runs with
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------


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
        metadata = self.api.get_optional(self.path, accept=_METADATA_ONLY)
        version = metadata["metadata"]["resourceVersion"] if metadata else None
        if version == self.resource_version:
            return False
        self.materialise()
        return True


# ---------------------------------------------------------------------------------------
# Env
# ---------------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([^()]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced, `$$` is a literal `$`, and
    an undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

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

    def _object(self, plural: str, name: str) -> dict[str, Any] | None:
        key = (plural, name)
        if key not in self._cache:
            path = f"/api/v1/namespaces/{self.namespace}/{plural}/{name}"
            self._cache[key] = self.api.get_optional(path)
        return self._cache[key]

    def _data(self, plural: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = self._object(plural, name)
        kind = "configmap" if plural == "configmaps" else "secret"
        if obj is None:
            if optional:
                return None
            raise PodConfigError(f'{kind} "{name}" not found')
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
            kind = "configmap" if plural == "configmaps" else "secret"
            raise PodConfigError(f'couldn\'t find key {ref["key"]} in {kind} "{ref["name"]}"')
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


# ---------------------------------------------------------------------------------------
# One pod
# ---------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    volumes: list[SourceVolume]


def _grace_of(pod: dict[str, Any]) -> int:
    """The grace period a deletion gives: the deletion's own, else the pod spec's."""
    given = pod["metadata"].get("deletionGracePeriodSeconds")
    if given is None:
        given = pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return max(0, int(given))


class PodWorker(threading.Thread):
    """Runs one pod from materialisation to its terminal status."""

    def __init__(self, executor: Executor, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod {metadata['namespace']}/{metadata['name']}", daemon=True)
        self.executor = executor
        self.api = executor.api
        self.pod = pod
        self.namespace = str(metadata["namespace"])
        self.pod_name = str(metadata["name"])
        self.uid = str(metadata["uid"])
        self.status_path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        self.root = executor.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.log_path = pod_log_path(executor.workdir, self.namespace, self.pod_name)
        self._terminate = threading.Event()
        self._grace: int | None = None
        self._grace_lock = threading.Lock()
        self.vanished = False
        self.exit_code: int | None = None
        self._started_at: str | None = None
        self._start_time = (pod.get("status") or {}).get("startTime") or _now()
        self._transitions: dict[str, tuple[str, str]] = {}

    # -- what the sync loop calls ---------------------------------------------------------

    def terminate(self, grace: int, vanished: bool = False) -> None:
        """Stop the container: SIGTERM, `grace` seconds, SIGKILL. A shorter grace given
        later (a second, forced delete) shortens the wait, as with the kubelet."""
        with self._grace_lock:
            if self._grace is None or grace < self._grace:
                self._grace = grace
        self.vanished = self.vanished or vanished
        self._terminate.set()

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:
            log.exception("pod %s/%s: executor failure", self.namespace, self.pod_name)
            with contextlib.suppress(Exception):
                self._report_failed_to_start("ExecutorError", str(error))

    def _run(self) -> None:
        spec = self.pod["spec"]
        try:
            container = self._the_container(spec)
        except PodUnsupported as error:
            self._report_failed_to_start("Unsupported", str(error))
            return
        reported: str | None = None
        while True:
            try:
                prepared = self._prepare(container)
                break
            except (PodConfigError, ApiError, OSError, http.client.HTTPException) as error:
                # Missing objects or a transient API failure: retried, as the kubelet does.
                if str(error) != reported:
                    reported = str(error)
                    log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
                    self._report_waiting(container, "CreateContainerConfigError", reported)
            except PodUnsupported as error:
                self._report_failed_to_start("Unsupported", str(error))
                return
            if self._terminate.wait(2.0):
                return  # deleted before it could start: the sync loop finishes it
        if self._terminate.is_set():
            return
        self._execute(container, prepared)

    @staticmethod
    def _the_container(spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("initContainers"):
            raise PodUnsupported("init containers are not modelled")
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise PodUnsupported(f"{len(containers)} containers: only one is modelled")
        if spec.get("restartPolicy", "Always") != "Never":
            raise PodUnsupported("only restartPolicy Never is modelled")
        container: dict[str, Any] = containers[0]
        if not container.get("command"):
            raise PodUnsupported("no command: the image's entrypoint is not modelled")
        return container

    def _prepare(self, container: dict[str, Any]) -> _Prepared:
        spec = self.pod["spec"]
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        mapping = Pod(root=self.root, mounts={}, env={}, command=[], working_dir=self.root)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        sources: list[SourceVolume] = []
        for mount in container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise PodUnsupported(f"volumeMount {mount['name']}: subPath is not modelled")
            volume = volumes[mount["name"]]
            host = self.root / "volumes" / mount["name"]
            mapping.mounts[str(mount["mountPath"])] = host
            if "configMap" in volume or "secret" in volume:
                source = SourceVolume(self.api, self.namespace, volume, host)
                source.materialise()
                sources.append(source)
            elif "emptyDir" in volume:
                host.mkdir(parents=True, exist_ok=True)
            else:
                raise PodUnsupported(f"volume {mount['name']}: only configMap, secret and "
                                     "emptyDir are modelled")  # fmt: skip
        env = EnvBuilder(self.api, self.pod).build(container, self.executor.image)
        image_path = env.pop("PATH")
        if not image_path.startswith(f"{self.executor.image.bin_dir}:"):
            # The pod's own PATH names the image's directories: the image bin dir (where
            # its python3 and bd are) stands in for them, so it goes first.
            image_path = f"{self.executor.image.bin_dir}:{image_path}"
        mapped = {name: translate_path_value(value, mapping) for name, value in env.items()}
        mapped["PATH"] = image_path
        if "HOME" not in mapped:  # the runtime sets it from the image user's home
            mapped["HOME"] = str(mapping.host_path("/root"))
            Path(mapped["HOME"]).mkdir(parents=True, exist_ok=True)
        argv = [expand(str(arg), mapped) for arg in container["command"]]
        argv += [expand(str(arg), mapped) for arg in container.get("args") or []]
        resolved = shutil.which(argv[0], path=image_path) if "/" not in argv[0] else None
        if "/" in argv[0]:
            argv[0] = str(mapping.host_path(argv[0]))
        elif resolved is None:
            raise PodUnsupported(f"{argv[0]!r}: not found on the image's PATH {image_path}")
        else:
            argv[0] = resolved
        cwd = mapping.host_path(str(container.get("workingDir") or "/"))
        cwd.mkdir(parents=True, exist_ok=True)
        return _Prepared(argv=argv, env=mapped, cwd=cwd, volumes=sources)

    def _execute(self, container: dict[str, Any], prepared: _Prepared) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as output:
            process = subprocess.Popen(
                prepared.argv,
                env=prepared.env,
                cwd=prepared.cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group: the container. SIGTERM goes to the main process
                # only (the runtime signals PID 1); SIGKILL to the whole group.
                start_new_session=True,
            )
        self._started_at = _now()
        log.info(
            "pod %s/%s: started pid %d: %s", self.namespace, self.pod_name, process.pid,
            " ".join(prepared.argv),
        )  # fmt: skip
        self._report_running(container)
        refresh = self.executor.refresh_seconds
        while process.poll() is None:
            if self._terminate.wait(refresh):
                self._kill_container(process)
                break
            for volume in prepared.volumes:
                try:
                    if volume.refresh():
                        log.info(
                            "pod %s/%s: refreshed %s %s", self.namespace, self.pod_name,
                            volume.kind, volume.name,
                        )  # fmt: skip
                except (ApiError, OSError, PodConfigError) as error:
                    log.warning("pod %s/%s: refresh: %s", self.namespace, self.pod_name, error)
        code = process.wait()
        # The container ends with its main process: nothing it started outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.exit_code = code
        log.info("pod %s/%s: exited %d", self.namespace, self.pod_name, code)
        self._report_terminated(container, code)

    def _kill_container(self, process: subprocess.Popen[bytes]) -> None:
        with self._grace_lock:
            grace = self._grace if self._grace is not None else DEFAULT_GRACE_SECONDS
        log.info("pod %s/%s: SIGTERM, grace %ds", self.namespace, self.pod_name, grace)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            # Re-read: a forced delete may have shortened the grace meanwhile.
            with self._grace_lock:
                deadline = min(deadline, time.monotonic() + (self._grace or 0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        if process.poll() is None:
            log.info("pod %s/%s: SIGKILL after %ds", self.namespace, self.pod_name, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    # -- status ---------------------------------------------------------------------------

    def _patch_status(self, status: dict[str, Any]) -> None:
        if self.vanished:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        for attempt in range(1, 4):
            try:
                self.api.request("PATCH", self.status_path, body, content_type=_STRATEGIC_PATCH)
                return
            except ApiError as error:
                if error.status in (404, 409):  # gone, or a new pod under the same name
                    return
                if error.status < 500 or attempt == 3:
                    raise
            except (OSError, http.client.HTTPException):
                if attempt == 3:
                    raise
            time.sleep(1.0)  # a busy or restarting API server: the status must not be lost

    def _conditions(self, ready: bool, reason: str | None) -> list[dict[str, Any]]:
        conditions = []
        for kind, value in (
            ("PodReadyToStartContainers", True),
            ("Initialized", True),
            ("ContainersReady", ready),
            ("Ready", ready),
        ):
            status = "True" if value else "False"
            # lastTransitionTime moves only when the condition's status does.
            if self._transitions.get(kind, ("", ""))[0] != status:
                self._transitions[kind] = (status, _now())
            condition: dict[str, Any] = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": self._transitions[kind][1],
            }
            if not value and reason:
                condition["reason"] = reason
            conditions.append(condition)
        return conditions

    def _container_status(self, container: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        running = "running" in state
        return [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": running,
                "started": running,
                "restartCount": 0,
                "state": state,
            }
        ]

    def _base_status(self) -> dict[str, Any]:
        return {
            "hostIP": self.executor.host_ip,
            "hostIPs": [{"ip": self.executor.host_ip}],
            "startTime": self._start_time,
        }

    def _report_waiting(self, container: dict[str, Any], reason: str, message: str) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        self._patch_status(
            {
                **self._base_status(),
                "phase": "Pending",
                "conditions": self._conditions(False, "ContainersNotReady"),
                "containerStatuses": self._container_status(container, state),
            }
        )

    def _report_running(self, container: dict[str, Any]) -> None:
        state = {"running": {"startedAt": self._started_at}}
        self._patch_status(
            {
                **self._base_status(),
                "phase": "Running",
                "conditions": self._conditions(True, None),
                "containerStatuses": self._container_status(container, state),
            }
        )

    def _report_terminated(self, container: dict[str, Any], code: int) -> None:
        terminated: dict[str, Any] = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self._started_at,
            "finishedAt": _now(),
        }
        if code < 0:
            terminated["signal"] = -code
        self._patch_status(
            {
                **self._base_status(),
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": self._conditions(False, "PodCompleted"),
                "containerStatuses": self._container_status(container, {"terminated": terminated}),
            }
        )

    def _report_failed_to_start(self, reason: str, message: str) -> None:
        log.error("pod %s/%s: %s: %s", self.namespace, self.pod_name, reason, message)
        self._patch_status(
            {
                **self._base_status(),
                "phase": "Failed",
                "reason": reason,
                "message": message,
                "conditions": self._conditions(False, reason),
            }
        )


# ---------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------


@dataclass
class Executor:
    """One Node and the pods bound to it. `run()` blocks until `stop()`; or use it as a
    context manager, which runs it in a background thread."""

    api: Api
    node_name: str
    workdir: Path
    image: ImageEnv
    poll_seconds: float = 0.5
    refresh_seconds: float = 2.0
    capacity: Mapping[str, str] = field(
        default_factory=lambda: {
            "cpu": "4",
            "memory": "8Gi",
            "pods": "50",
            "ephemeral-storage": "20Gi",
        }
    )
    host_ip: str = "127.0.0.1"
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _workers: dict[str, PodWorker] = field(default_factory=dict, init=False, repr=False)
    _finished: set[str] = field(default_factory=set, init=False, repr=False)
    _confirmed: set[str] = field(default_factory=set, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    # -- node registration and heartbeat ---------------------------------------------------

    def _ready_conditions(self) -> list[dict[str, Any]]:
        now = _now()
        healthy = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "pod executor (stands in for the kubelet)",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for kind, status, reason in healthy
        ]

    def _node_status(self) -> dict[str, Any]:
        return {
            "capacity": dict(self.capacity),
            "allocatable": dict(self.capacity),
            "conditions": self._ready_conditions(),
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "pods.executor",
                "containerRuntimeVersion": "pods.executor://local-processes",
                "kubeletVersion": "",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                    platform.machine(), platform.machine()
                ),
            },
        }

    def register(self) -> None:
        """Create the Node (or, left over from an earlier run, re-mark it Ready) and its Lease."""
        status = self._node_status()
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": status["nodeInfo"]["architecture"],
                },
            },
            "spec": {},
            "status": status,
        }
        try:
            created = self.api.request("POST", "/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            created = self._patch_node_status()
        uid = created["metadata"]["uid"]
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": uid}
                ],
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro_now(),
            },
        }
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        try:
            self.api.request("POST", path, lease)
        except ApiError as error:
            if error.status != 409:
                raise
            self._renew_lease()
        log.info("node %s registered (Ready)", self.node_name)

    def _patch_node_status(self) -> dict[str, Any]:
        return self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            {"status": self._node_status()},
            content_type=_STRATEGIC_PATCH,
        )

    def _renew_lease(self) -> None:
        self.api.request(
            "PATCH",
            f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node_name}",
            {"spec": {"renewTime": _micro_now(), "holderIdentity": self.node_name}},
            content_type=_MERGE_PATCH,
        )

    def _heartbeat(self) -> None:
        """The node lifecycle controller marks a node NotReady (and evicts) once neither
        its Lease nor its Ready condition moved for its grace period (40-50 s)."""
        last_status = time.monotonic()
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= NODE_STATUS_SECONDS:
                    self._patch_node_status()
                    last_status = time.monotonic()
            except (ApiError, OSError, http.client.HTTPException) as error:
                log.warning("heartbeat: %s", error)

    # -- pods -----------------------------------------------------------------------------

    def _list_pods(self) -> list[dict[str, Any]]:
        listed = self.api.get(
            "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={self.node_name}"}
        )
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        """The kubelet's last word on a gracefully deleted pod: terminal status (if the
        container never ran), then DELETE with grace 0 and the pod's UID as precondition."""
        metadata = pod["metadata"]
        uid = str(metadata["uid"])
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}"
        try:
            if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                self.api.request(
                    "PATCH",
                    f"{path}/status",
                    {
                        "metadata": {"uid": uid},
                        "status": {
                            "phase": "Failed",
                            "reason": "Terminated",
                            "message": "deleted before its container ran",
                        },
                    },
                    content_type=_STRATEGIC_PATCH,
                )
            self.api.request(
                "DELETE",
                path,
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise
        self._confirmed.add(uid)
        log.info("pod %s/%s: deletion confirmed", metadata["namespace"], metadata["name"])

    def sync_once(self) -> None:
        """One pass over the pods bound to this node: start, stop, confirm deletions."""
        pods = self._list_pods()
        seen: set[str] = set()
        for pod in pods:
            metadata = pod["metadata"]
            uid = str(metadata["uid"])
            seen.add(uid)
            deleting = metadata.get("deletionTimestamp") is not None
            worker = self._workers.get(uid)
            if worker is not None and worker.is_alive():
                if deleting:
                    worker.terminate(_grace_of(pod))
                continue
            if worker is not None:  # finished since the last pass
                del self._workers[uid]
                self._finished.add(uid)
            if uid in self._finished or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                self._finished.add(uid)
                if deleting and uid not in self._confirmed:
                    self._confirm_deletion(pod)
                continue
            if deleting:
                if uid not in self._confirmed:
                    self._confirm_deletion(pod)
                continue
            worker = PodWorker(self, pod)
            self._workers[uid] = worker
            log.info("pod %s/%s: bound here, starting", metadata["namespace"], metadata["name"])
            worker.start()
        for uid, worker in list(self._workers.items()):
            if uid not in seen:  # deleted with grace 0 (forced) or its node binding lost
                worker.terminate(_grace_of(worker.pod), vanished=True)
                if not worker.is_alive():
                    del self._workers[uid]
                    self._finished.add(uid)

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Register the node, then sync pods every `poll_seconds` until stop()."""
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self.register()
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        try:
            while not self._stopping.is_set():
                try:
                    self.sync_once()
                except (ApiError, OSError, http.client.HTTPException) as error:
                    log.warning("sync: %s", error)
                self._stopping.wait(self.poll_seconds)
        finally:
            self._shutdown()
            heartbeat.join(timeout=HEARTBEAT_SECONDS + 5)

    def stop(self) -> None:
        self._stopping.set()

    def _shutdown(self) -> None:
        """Stop every container at once (the node goes away), then remove Node and Lease."""
        for worker in self._workers.values():
            worker.terminate(0, vanished=True)
        for worker in self._workers.values():
            worker.join(timeout=10)
        for path in (
            f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node_name}",
            f"/api/v1/nodes/{self.node_name}",
        ):
            with contextlib.suppress(ApiError, OSError, http.client.HTTPException):
                self.api.request("DELETE", path)
        log.info("node %s: stopped", self.node_name)

    def __enter__(self) -> Executor:
        self._thread = threading.Thread(target=self.run, name="executor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=60)
