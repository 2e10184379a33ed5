"""The BeadBoard stub's answers through `httpx.MockTransport`: no socket, no server thread.

The stub still chooses every answer (programmed replies, handlers, defaults) and records every
request, so a test reads the same either way. What only a socket can do — a reply that comes
late (`delay`, `stall`) or never (`drop`) — is refused here: such a test runs the harness
over sockets (`JobHarness.over_sockets`).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply


def stub_transport(stub: BeadBoardStub) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        reply = stub._record_and_choose(_recorded(request))  # the stub's own routing
        if reply.delay or reply.stall or reply.drop:
            raise AssertionError(
                f"{reply} needs a real socket: run the harness over_sockets() for this test"
            )
        return _response(reply)

    return httpx.MockTransport(handle)


def _recorded(request: httpx.Request) -> RecordedRequest:
    body = request.read()
    parsed: Any = None
    if body:
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
    return RecordedRequest(
        method=request.method,
        path=request.url.path,
        query={key: request.url.params.get_list(key) for key in request.url.params},
        headers=dict(request.headers),
        body=body,
        json=parsed,
        time=time.monotonic(),
    )


def _response(reply: Reply) -> httpx.Response:
    payload, content_type = reply.payload()
    return httpx.Response(
        reply.status, headers={"Content-Type": content_type, **reply.headers}, content=payload
    )
