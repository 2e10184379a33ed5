"""The only place that speaks HTTP: BeadBoard's two agent routes, and the agent's /health.

Every request is bounded twice. In time, as a whole, by the configured timeout: httpx's
timeouts apply to each read, so a server that drips one byte a second would never trip
them. In size: at most BODY_LIMIT_BYTES of a body is read, the rest never leaves the socket.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from jobs.log import excerpt

STATUS_PATH = "/api/agent-status"
DISPATCH_PATH = "/api/agent-dispatch"
# BeadBoard's answers are a few dozen bytes; anything this long is not one of them.
BODY_LIMIT_BYTES = 64 * 1024
# How much of a reason, a label (a job id, a content type) or a body goes into a log line
# or a bead's note.
REASON_CHARS = 160
LABEL_CHARS = 80
BODY_EXCERPT_CHARS = 120


class BeadBoardError(Exception):
    """BeadBoard could not be asked, or answered something we cannot use."""


class AgentServiceError(Exception):
    """claude-agent-service's /health (agentHealthUrl) could not be asked, or answered
    something we cannot use. Not a BeadBoardError: the operator looks at another service."""


@dataclass(frozen=True)
class Unconfirmed:
    """A 2xx whose body is not BeadBoard's answer (a JSON object): a misrouted ingress or a
    proxy may have said it. Still taken as sent, since sending again risks double work."""

    body: str  # what came instead, in a few words: "a non-JSON body", "an empty body"...
    content_type: str
    excerpt: str


@dataclass(frozen=True)
class Dispatched:
    """Any 2xx: BeadBoard took the bead. Never send it again, with or without a job id."""

    job_id: str | None
    http_status: int = 200
    unconfirmed: Unconfirmed | None = None


@dataclass(frozen=True)
class AgentBusy:
    """409: the agent refused because it is busy; not the bead's fault."""

    detail: str


@dataclass(frozen=True)
class DispatchFailed:
    """BeadBoard refused the bead (3xx, 4xx other than 409): a counted attempt. The reason
    goes into the bead's note, so it is short."""

    reason: str


@dataclass(frozen=True)
class DispatchUnknown:
    """The request went out but no whole answer came back (timeout, dropped connection, a
    gateway's 504): BeadBoard may have started a job. Sending again could run the bead twice."""

    reason: str


@dataclass(frozen=True)
class ServiceDown:
    """No job was started because the service is down, not because of the bead: BeadBoard
    could not be reached (nothing was sent), or it answered 5xx (other than 504) for itself
    or for the agent service behind it. Retrying later is safe; no attempt is counted."""

    reason: str


DispatchOutcome = Dispatched | AgentBusy | DispatchFailed | DispatchUnknown | ServiceDown


@dataclass(frozen=True)
class Answer:
    """A response as far as it was read: the status, and at most BODY_LIMIT_BYTES of body."""

    status: int
    content_type: str
    body: bytes
    cut: bool  # the body went on past BODY_LIMIT_BYTES; the rest was never read

    def json_object(self) -> dict[str, object] | None:
        """The body as a JSON object, or None: not JSON, not an object, or not read whole."""
        value = self._json()
        return value if isinstance(value, dict) else None

    def not_an_object(self) -> str | None:
        """What the body is instead of a JSON object, in a few words; None for an object."""
        if self.cut:
            return f"a body longer than {BODY_LIMIT_BYTES // 1024} KiB"
        if not self.body.strip():
            return "an empty body"
        value = self._json()
        if value is _NOT_JSON:
            return "a non-JSON body"
        return None if isinstance(value, dict) else "a JSON body that is not an object"

    def excerpt(self) -> str:
        # Both ends of the body, without flattening all 64 KiB of it (4 bytes a character).
        room = 4 * BODY_EXCERPT_CHARS
        ends = (
            self.body if len(self.body) <= 2 * room else self.body[:room] + b" " + self.body[-room:]
        )
        return excerpt(ends.decode("utf-8", errors="replace"), BODY_EXCERPT_CHARS)

    def _json(self) -> object:
        if self.cut:
            return _NOT_JSON
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            # RecursionError: `[[[[…` nested deeper than the parser recurses.
            return _NOT_JSON


_NOT_JSON = object()


class _NoAnswer(Exception):
    """No whole answer came back. `reached`: the request may have reached the service."""

    def __init__(self, reason: str, *, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached


# Nothing of the request left this machine when these are raised.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Deadline:
    """One request's total time limit. When it passes, the request's socket is shut down:
    whatever read or write is blocked on it returns at once, whatever the server does."""

    _OPENED = (".connect_tcp.complete", ".connect_unix_socket.complete", ".start_tls.complete")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = False
        self._over = False
        self._socket: socket.socket | None = None
        self._guard = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        """Before the connection closes: a socket is never shut down once it is let go."""
        with self._guard:
            self._over = True
        self._timer.cancel()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's `trace` extension: note the socket of the connection as it is opened."""
        if not event.endswith(self._OPENED):
            return
        extra_info = getattr(info.get("return_value"), "get_extra_info", None)
        sock = extra_info("socket") if callable(extra_info) else None
        if not isinstance(sock, socket.socket):
            return
        with self._guard:
            self._socket = sock  # a TLS socket replaces the plain one it was made from
            if self.passed and not self._over:
                _shut(sock)  # the deadline passed while the connection was being opened

    def _expire(self) -> None:
        with self._guard:
            if self._over:
                return
            self.passed = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # The plain socket's shutdown, for a TLS socket too: it leaves the TLS state that
        # the reading thread is using alone, and the kernel wakes that read with an EOF.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _exchange(client: httpx.Client, seconds: float, method: str, url: str, **kwargs: Any) -> Answer:
    """One request, `seconds` at most from the first byte out to the last byte read.

    Raises _NoAnswer when no whole answer came back in time.
    """
    deadline = _Deadline(seconds)
    deadline.start()
    try:
        with client.stream(method, url, extensions={"trace": deadline.trace}, **kwargs) as response:
            body, cut = _read_capped(response)
            deadline.stop()
    except httpx.HTTPError as exc:
        if isinstance(exc, _NOT_SENT):
            raise _NoAnswer(_describe_transport_error(exc), reached=False) from None
        # httpx's own read or write timeout is no shorter than the deadline: either one says
        # the same, and which of the two fires first is a race.
        timed_out = deadline.passed or isinstance(exc, httpx.TimeoutException)
        reason = _timed_out(seconds) if timed_out else _describe_transport_error(exc)
        raise _NoAnswer(reason, reached=True) from None
    finally:
        deadline.stop()
    if deadline.passed:
        # A body that ends with the connection (no length given) ends silently when cut.
        raise _NoAnswer(_timed_out(seconds), reached=True)
    return Answer(response.status_code, response.headers.get("content-type", ""), body, cut)


def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """At most BODY_LIMIT_BYTES of the body, and whether there was more."""
    if response.is_stream_consumed:
        # A transport that holds the whole body in memory already (httpx.MockTransport).
        return response.content[:BODY_LIMIT_BYTES], len(response.content) > BODY_LIMIT_BYTES
    chunks: list[bytes] = []
    room = BODY_LIMIT_BYTES
    # Raw bytes: with `accept-encoding: identity` asked for, nothing is decompressed here.
    for chunk in response.iter_raw():
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        room -= len(chunk)
    return b"".join(chunks), False


def _timed_out(seconds: float) -> str:
    return f"timeout (no whole answer within {seconds:g}s)"


def _client(
    timeout_seconds: float, transport: httpx.BaseTransport | None, **options: Any
) -> httpx.Client:
    return httpx.Client(
        timeout=timeout_seconds,
        transport=transport,
        follow_redirects=False,
        headers={
            "user-agent": "beads-autodispatch",
            # A fresh connection each request: one shut down at its deadline is never reused.
            "connection": "close",
            # The body is read raw and capped: a compressed one could inflate past the cap.
            "accept-encoding": "identity",
        },
        **options,
    )


class BeadBoard:
    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._client = _client(timeout_seconds, transport, base_url=self.base_url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BeadBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def agent_busy(self) -> bool:
        """BeadBoard's own view; it fails open (busy=false) when the agent is unreachable."""
        try:
            answer = _exchange(self._client, self.timeout_seconds, "GET", STATUS_PATH)
        except _NoAnswer as exc:
            raise BeadBoardError(f"BeadBoard GET {STATUS_PATH}: {exc.reason}") from None
        if answer.status != 200:
            raise BeadBoardError(f"BeadBoard GET {STATUS_PATH}: HTTP {answer.status}")
        body = answer.json_object()
        busy = body.get("busy") if body is not None else None
        if not isinstance(busy, bool):
            raise BeadBoardError(f"BeadBoard GET {STATUS_PATH}: answer has no boolean 'busy'")
        return busy

    def dispatch(self, bead_id: str) -> DispatchOutcome:
        try:
            answer = _exchange(
                self._client, self.timeout_seconds, "POST", DISPATCH_PATH, json={"taskId": bead_id}
            )
        except _NoAnswer as exc:
            # Refused, or no connection in time: nothing reached BeadBoard.
            return DispatchUnknown(exc.reason) if exc.reached else ServiceDown(exc.reason)
        return _dispatch_outcome(answer)


def _dispatch_outcome(answer: Answer) -> DispatchOutcome:
    """What BeadBoard's answer to the POST means (docs/beadboard-contract.md)."""
    body = answer.json_object()
    error = excerpt(str(body.get("error")), REASON_CHARS) if body and body.get("error") else ""
    suffix = f" {error}" if error else ""
    status = answer.status
    if 200 <= status < 300:
        return Dispatched(_job_id(body), status, _unconfirmed(answer))
    if status == 409:
        return AgentBusy(error or "Agent is busy")
    if status == 504:
        # A gateway stopped waiting; BeadBoard behind it may still have started the job.
        return DispatchUnknown(f"HTTP 504 gateway timeout{suffix}")
    if status >= 500:
        # BeadBoard's own words for "I or the agent service cannot take work now".
        return ServiceDown(f"HTTP {status}{suffix}")
    return DispatchFailed(f"HTTP {status}{suffix}")


def _unconfirmed(answer: Answer) -> Unconfirmed | None:
    instead = answer.not_an_object()
    if instead is None:
        return None
    return Unconfirmed(instead, excerpt(answer.content_type, LABEL_CHARS), answer.excerpt())


def _job_id(body: dict[str, object] | None) -> str | None:
    value = body.get("job_id") if body is not None else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value).strip():
        return excerpt(str(value), LABEL_CHARS)
    return None


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({excerpt(str(exc), REASON_CHARS) or 'refused'})"
    return f"{type(exc).__name__}: {excerpt(str(exc), REASON_CHARS)}"


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
        self.timeout_seconds = timeout_seconds
        self._client = _client(timeout_seconds, transport)

    def close(self) -> None:
        self._client.close()

    def load(self) -> AgentLoad:
        asked = f"claude-agent-service GET {self.url}"
        try:
            answer = _exchange(self._client, self.timeout_seconds, "GET", self.url)
        except _NoAnswer as exc:
            raise AgentServiceError(f"{asked}: {exc.reason}") from None
        body = answer.json_object()
        if body is None:
            raise AgentServiceError(f"{asked}: HTTP {answer.status}, not a JSON object")
        counts: dict[str, int] = {}
        for key in ("active", "queued", "capacity"):
            value = body.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AgentServiceError(f"{asked}: '{key}' missing or not a count")
            counts[key] = value
        # 503 is how the service says "full"; the counts still say by how much.
        return AgentLoad(**counts)
