"""The API server over HTTPS: what a kubeconfig names, and JSON requests through httpx."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
# Strategic merge: the pod's conditions merge by type (the scheduler's PodScheduled stays).
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


# What a loop that talks to the API server outlives: an error answer, or no answer.
API_FAILURES = (ApiError, httpx.TransportError)


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
    """JSON requests to the API server; one httpx client (a thread-safe keep-alive pool).

    trust_env=False: no proxy or CA bundle from the environment is ever used for loopback.
    """

    def __init__(self, config: KubeConfig, timeout: float = 30.0) -> None:
        server = httpx.URL(config.server)
        if server.scheme != "https" or not server.host:
            raise ValueError(f"server must be https://host:port, got {config.server!r}")
        self._client = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {config.token}"},
            verify=ssl.create_default_context(cadata=config.ca_pem),
            timeout=timeout,
            trust_env=False,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        accept: str = JSON,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Accept": accept} | ({} if body is None else {"Content-Type": content_type})
        content = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                response = self._client.request(
                    method, path, content=content, headers=headers, params=query
                )
                break
            except httpx.TransportError:
                if attempt == 2:  # a kept-alive connection the server closed: one fresh retry
                    raise
        if response.status_code >= 400:
            url = response.request.url.raw_path.decode()
            raise ApiError(response.status_code, method, url, response.text)
        decoded: dict[str, Any] = response.json() if response.content else {}
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


def now() -> str:
    """A Time, as the API server writes it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """A MicroTime (Lease renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
