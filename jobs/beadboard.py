"""The only place that speaks HTTP: BeadBoard's two agent routes."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

STATUS_PATH = "/api/agent-status"
DISPATCH_PATH = "/api/agent-dispatch"


class BeadBoardError(Exception):
    """BeadBoard could not be asked, or answered something we cannot use."""


@dataclass(frozen=True)
class Dispatched:
    """Any 2xx: BeadBoard took the bead. Never send it again, with or without a job id."""

    job_id: str | None
    http_status: int = 200


@dataclass(frozen=True)
class AgentBusy:
    """409: the agent refused because it is busy; not the bead's fault."""

    detail: str


@dataclass(frozen=True)
class DispatchFailed:
    """BeadBoard did not start a job; the reason goes into the bead's note, so it is short."""

    reason: str


@dataclass(frozen=True)
class DispatchUnknown:
    """The request went out but no answer came back (read timeout, dropped connection):
    BeadBoard may have started a job. Sending again could run the bead twice."""

    reason: str


DispatchOutcome = Dispatched | AgentBusy | DispatchFailed | DispatchUnknown


class BeadBoard:
    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_seconds,
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": "beads-autodispatch"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BeadBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def agent_busy(self) -> bool:
        """BeadBoard's own view; it fails open (busy=false) when the agent is unreachable."""
        try:
            response = self._client.get(STATUS_PATH)
        except httpx.HTTPError as exc:
            raise BeadBoardError(f"GET {STATUS_PATH}: {_describe_transport_error(exc)}") from None
        if response.status_code != 200:
            raise BeadBoardError(f"GET {STATUS_PATH}: HTTP {response.status_code}")
        body = _json_object(response)
        busy = body.get("busy") if body is not None else None
        if not isinstance(busy, bool):
            raise BeadBoardError(f"GET {STATUS_PATH}: answer has no boolean 'busy'")
        return busy

    def dispatch(self, bead_id: str) -> DispatchOutcome:
        try:
            response = self._client.post(DISPATCH_PATH, json={"taskId": bead_id})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached BeadBoard: safe to count as a failed attempt and retry later.
            return DispatchFailed(_describe_transport_error(exc))
        except httpx.HTTPError as exc:
            return DispatchUnknown(_describe_transport_error(exc))
        body = _json_object(response)
        error = _short(str(body.get("error"))) if body and body.get("error") else ""
        if 200 <= response.status_code < 300:
            return Dispatched(_job_id(body), response.status_code)
        if response.status_code == 409:
            return AgentBusy(error or "Agent is busy")
        suffix = f" {error}" if error else ""
        return DispatchFailed(f"HTTP {response.status_code}{suffix}")


def _job_id(body: dict[str, object] | None) -> str | None:
    value = body.get("job_id") if body is not None else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value).strip():
        return _short(str(value), 80)
    return None


def _json_object(response: httpx.Response) -> dict[str, object] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({_short(str(exc)) or 'refused'})"
    return f"{type(exc).__name__}: {_short(str(exc))}"


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class AgentLoad:
    """claude-agent-service `/health`: how many of its slots are taken."""

    active: int
    queued: int
    capacity: int

    def free_slots(self, max_in_flight: int) -> int:
        return max(0, min(self.capacity, max_in_flight) - self.active - self.queued)


class AgentHealth:
    """Reads the agent service's load, so one run can fill every free slot."""

    def __init__(
        self, url: str, timeout_seconds: float, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self._client = httpx.Client(timeout=timeout_seconds, transport=transport)

    def close(self) -> None:
        self._client.close()

    def load(self) -> AgentLoad:
        try:
            response = self._client.get(self.url)
        except httpx.HTTPError as exc:
            raise BeadBoardError(f"GET {self.url}: {_describe_transport_error(exc)}") from None
        body = _json_object(response)
        if body is None:
            raise BeadBoardError(f"GET {self.url}: HTTP {response.status_code}, not a JSON object")
        counts: dict[str, int] = {}
        for key in ("active", "queued", "capacity"):
            value = body.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BeadBoardError(f"GET {self.url}: '{key}' missing or not a count")
            counts[key] = value
        # 503 is how the service says "full"; the counts still say by how much.
        return AgentLoad(**counts)
