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
# Only an object's metadata: enough to see that a ConfigMap changed.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
Query = Mapping[str, str] | None


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
        """The current context of a kubeconfig (JSON or YAML) with an inline token."""
        document = yaml.safe_load(path.read_text())

        def named(section: str, name: str) -> dict[str, Any]:
            entry = next(e for e in document[section] if e["name"] == name)
            value: dict[str, Any] = entry[section[:-1]]
            return value

        context = named("contexts", document["current-context"])
        cluster, user = named("clusters", context["cluster"]), named("users", context["user"])
        if not user.get("token"):
            raise ValueError(f"{path}: the executor supports token authentication only")
        ca_data = cluster.get("certificate-authority-data")
        ca_pem = base64.b64decode(ca_data).decode() if ca_data else None
        return cls(str(cluster["server"]).rstrip("/"), str(user["token"]), ca_pem)


class Api:
    """JSON requests to the API server through one httpx client (thread-safe, keep-alive);
    trust_env=False: never a proxy or a CA bundle from the environment."""

    def __init__(self, config: KubeConfig) -> None:
        self._client = httpx.Client(
            base_url=config.server,
            headers={"Authorization": f"Bearer {config.token}"},
            verify=ssl.create_default_context(cadata=config.ca_pem),
            timeout=30.0,
            trust_env=False,
        )

    def request(
        self, method: str, path: str, body: Any = None, *, query: Query = None, accept: str = JSON
    ) -> dict[str, Any]:
        """`body` as JSON; for PATCH, a JSON merge patch."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else JSON
        content = None if body is None else json.dumps(body).encode()
        response = self._client.request(
            method, path, content=content, headers=headers, params=query
        )
        if response.status_code >= 400:
            raise ApiError(response.status_code, method, path, response.text)
        decoded: dict[str, Any] = response.json() if response.content else {}
        return decoded

    def get(self, path: str, *, query: Query = None, accept: str = JSON) -> dict[str, Any]:
        return self.request("GET", path, query=query, accept=accept)

    def get_optional(self, path: str) -> dict[str, Any] | None:
        """GET, None for 404."""
        try:
            return self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise


def now() -> str:
    """A MicroTime as the API server writes it (a Time field takes it too)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
