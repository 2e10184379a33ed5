"""A real HTTP server standing in for BeadBoard (and claude-agent-service's /health).

It listens on 127.0.0.1 on a free port, records every request, and answers each route
from, in order: a queue of programmed responses (FIFO, consumed), else a per-route
handler callable, else the route's default. Responses can be delayed, stall after the
headers ("slow body"), or drop the connection without any response, so client timeouts
and connection errors can be tested against a real socket.

    with BeadBoardStub() as board:
        board.program("/api/agent-dispatch", Reply(status=409, json={"error": "Agent is busy"}))
        ...  # point the code under test at board.url
        assert board.requests_to("/api/agent-dispatch")[0].json == {"taskId": "bd-abc"}
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jobs.beadboard import DISPATCH_PATH, STATUS_PATH

AGENT_STATUS = STATUS_PATH
AGENT_DISPATCH = DISPATCH_PATH
HEALTH = "/health"

_UNSET: Any = object()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any  # parsed body, or None when empty or not JSON
    time: float  # time.monotonic() when the request line and body had been read

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Reply:
    """What to send back. `json` wins over `body`; with neither the body is empty.

    delay: seconds to wait before sending anything.
    stall: seconds to wait after the status line and headers, before the body (a client
        read timeout fires here; Content-Length is already announced).
    drop: close the connection without writing a single byte.
    """

    status: int = 200
    json: Any = _UNSET
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stall: float = 0.0
    drop: bool = False

    def payload(self) -> tuple[bytes, str]:
        if self.json is not _UNSET:
            return json.dumps(self.json).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body or b"", "application/octet-stream"


Handler = Callable[[RecordedRequest], Reply]
Route = tuple[str, str]  # (method, path)


@dataclass
class HealthState:
    """claude-agent-service's /health body; `busy` defaults to active >= capacity."""

    active: int = 0
    queued: int = 0
    capacity: int = 1
    busy: bool | None = None
    status_code: int = 200

    def body(self) -> dict[str, Any]:
        busy = self.busy if self.busy is not None else self.active >= self.capacity
        return {
            "status": "ok",
            "busy": busy,
            "active": self.active,
            "queued": self.queued,
            "capacity": self.capacity,
        }


class BeadBoardStub:
    """The stub server. Use as a context manager, or call start()/close()."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._queues: dict[Route, deque[Reply]] = {}
        self._handlers: dict[Route, Handler] = {}
        self._dispatch_count = 0
        self._stopping = threading.Event()
        self.busy = False  # what GET /api/agent-status answers by default
        self.health = HealthState()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> BeadBoardStub:
        stub = self

        class _Handler(_RequestHandler):
            owner = stub

        server = ThreadingHTTPServer((self._host, 0), _Handler)
        # Handler threads may be parked in a delay or stall; never join them on close.
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay/stall
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> BeadBoardStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stub is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. http://127.0.0.1:41234."""
        return f"http://{self._host}:{self.port}"

    # -- programming ---------------------------------------------------------------

    def program(self, path: str, *replies: Reply, method: str | None = None) -> None:
        """Queue replies for a route; each request consumes one, then defaults resume."""
        route = (method or _default_method(path), path)
        with self._lock:
            self._queues.setdefault(route, deque()).extend(replies)

    def set_handler(self, path: str, handler: Handler | None, method: str | None = None) -> None:
        """A callable answering every request to the route (after queued replies run out)."""
        route = (method or _default_method(path), path)
        with self._lock:
            if handler is None:
                self._handlers.pop(route, None)
            else:
                self._handlers[route] = handler

    def pending(self, path: str, method: str | None = None) -> int:
        """How many queued replies the route has not used yet."""
        with self._lock:
            return len(self._queues.get((method or _default_method(path), path), ()))

    # -- inspection ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                request
                for request in self._requests
                if request.path == path and (method is None or request.method == method)
            ]

    def wait_for(self, path: str, count: int = 1, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until `count` requests reached `path`; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.requests_to(path)
            if len(seen) >= count:
                return seen
            if time.monotonic() >= deadline:
                raise AssertionError(f"{path}: saw {len(seen)} requests, wanted {count}")
            time.sleep(0.01)

    def clear(self) -> None:
        """Forget recorded requests (programmed replies and handlers stay)."""
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Back to a fresh stub: no requests, queues, handlers; idle defaults."""
        with self._lock:
            self._requests.clear()
            self._queues.clear()
            self._handlers.clear()
            self._dispatch_count = 0
            self.busy = False
            self.health = HealthState()

    # -- used by the request handler -----------------------------------------------------

    def _record_and_choose(self, request: RecordedRequest) -> Reply:
        route = (request.method, request.path)
        with self._lock:
            self._requests.append(request)
            queue = self._queues.get(route)
            if queue:
                return queue.popleft()
            handler = self._handlers.get(route)
        if handler is not None:
            return handler(request)
        return self._default(request)

    def _default(self, request: RecordedRequest) -> Reply:
        route = (request.method, request.path)
        if route == ("GET", AGENT_STATUS):
            return Reply(json={"busy": self.busy})
        if route == ("POST", AGENT_DISPATCH):
            with self._lock:
                self._dispatch_count += 1
                number = self._dispatch_count
            return Reply(json={"job_id": f"job-{number}"})
        if route == ("GET", HEALTH):
            return Reply(status=self.health.status_code, json=self.health.body())
        if request.path in (AGENT_STATUS, AGENT_DISPATCH, HEALTH):
            return Reply(status=405, json={"error": "Method Not Allowed"})
        return Reply(status=404, json={"error": "Not Found"})

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _default_method(path: str) -> str:
    return "POST" if path == AGENT_DISPATCH else "GET"


class _RequestHandler(BaseHTTPRequestHandler):
    owner: BeadBoardStub
    protocol_version = "HTTP/1.1"  # keep-alive like Next.js; every reply has Content-Length
    # Headers and body go out in two writes; with Nagle on, loopback adds a 40 ms delayed-ACK
    # stall to every reply.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (pytest would show it on failures)."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parsed_body: Any = None
        if body:
            with contextlib.suppress(ValueError):
                parsed_body = json.loads(body)
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={key: value for key, value in self.headers.items()},
            body=body,
            json=parsed_body,
            time=time.monotonic(),
        )
        try:
            reply = self.owner._record_and_choose(request)
        except Exception as exc:  # a test's handler blew up: say so instead of hanging
            reply = Reply(status=500, json={"error": f"stub handler failed: {exc!r}"})
        self.owner._sleep(reply.delay)
        if reply.drop:
            self._drop()
            return
        payload, content_type = reply.payload()
        try:
            self.send_response(reply.status)
            headers = {"Content-Type": content_type, **reply.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            if reply.stall > 0:
                self.owner._sleep(reply.stall)
                self.close_connection = True  # the client has probably given up
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up first; nothing to tell it

    def _drop(self) -> None:
        # Close without a byte: the client sees the peer hang up before any status line
        # (http.client raises RemoteDisconnected, urllib a URLError/ConnectionError).
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
