"""BeadBoard client: every answer and transport fault maps to one outcome with a short reason."""

from __future__ import annotations

import time
import tracemalloc

import httpx
import pytest

from jobs.beadboard import (
    BODY_LIMIT_BYTES,
    AgentBusy,
    AgentHealth,
    AgentServiceError,
    BeadBoard,
    BeadBoardError,
    Dispatched,
    DispatchFailed,
    DispatchOutcome,
    DispatchUnknown,
    ServiceDown,
    Unconfirmed,
)
from tests.support.harness import plain_http
from tests.support.raw_http import ScriptedAnswer
from tests.support.routes import DISPATCH, HEALTH

NESTED = b"[" * 50_000  # within BODY_LIMIT_BYTES, and json.loads raises RecursionError
EMPTY = Unconfirmed("an empty body", "", "")


def board_answering(handler: httpx.MockTransport) -> BeadBoard:
    return BeadBoard("http://beadboard.test/", timeout_seconds=1, transport=handler)


def raising(exc: Exception) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handle)


def answering(status: int, **kwargs: object) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        (answering(200, json={"job_id": "j-1"}), Dispatched("j-1")),
        # Any 2xx is BeadBoard taking the bead: a missing or odd job id never makes it a failure.
        (answering(201, json={"job_id": 42}), Dispatched("42", 201)),
        (answering(202), Dispatched(None, 202, EMPTY)),
        (answering(200, json={"job_id": "  "}), Dispatched(None)),
        (answering(200, json={"job_id": True}), Dispatched(None)),
        (answering(200, json={"status": "queued"}), Dispatched(None)),
        # A 2xx that is not a JSON object is not BeadBoard's answer: taken, but flagged.
        (
            answering(200, html="<html>ok</html>"),
            Dispatched(
                None,
                200,
                Unconfirmed("a non-JSON body", "text/html; charset=utf-8", "<html>ok</html>"),
            ),
        ),
        (
            answering(200, json=["j-1"]),
            Dispatched(
                None,
                200,
                Unconfirmed("a JSON body that is not an object", "application/json", '["j-1"]'),
            ),
        ),
        (answering(204), Dispatched(None, 204, EMPTY)),
        (answering(200, json={"job_id": "j" * 200}), Dispatched("j" * 40 + "…" + "j" * 39)),
        (
            answering(200, content=NESTED),
            Dispatched(None, 200, Unconfirmed("a non-JSON body", "", "[" * 60 + "…" + "[" * 59)),
        ),
        # Read no further than the limit: what is cut is not read as an answer.
        (
            answering(200, content=b'{"job_id": "j"}' + b" " * BODY_LIMIT_BYTES),
            Dispatched(None, 200, Unconfirmed("a body longer than 64 KiB", "", '{"job_id": "j"}')),
        ),
        (answering(302, headers={"location": "/login"}), DispatchFailed("HTTP 302")),
        (answering(409, json={"error": "Agent is busy"}), AgentBusy("Agent is busy")),
        (answering(409, text="busy"), AgentBusy("Agent is busy")),
        (
            answering(400, json={"error": "bead not found"}),
            DispatchFailed("HTTP 400 bead not found"),
        ),
        (answering(404, text="Not Found"), DispatchFailed("HTTP 404")),
        # BeadBoard or the agent service down: not the bead's fault, so never "failed".
        (
            answering(500, json={"error": "x" * 500}),
            ServiceDown("HTTP 500 " + "x" * 80 + "…" + "x" * 79),
        ),
        (answering(502, text="Bad Gateway"), ServiceDown("HTTP 502")),
        (answering(502, json={"error": "Queue full"}), ServiceDown("HTTP 502 Queue full")),
        (answering(503), ServiceDown("HTTP 503")),
        (
            raising(httpx.ConnectError("[Errno 111] Connection refused")),
            ServiceDown("connection failed ([Errno 111] Connection refused)"),
        ),
        (raising(httpx.ConnectTimeout("timed out")), ServiceDown("timeout (ConnectTimeout)")),
        (raising(httpx.PoolTimeout("timed out")), ServiceDown("timeout (PoolTimeout)")),
        # A gateway that stopped waiting: BeadBoard may have started the job behind it.
        (answering(504, text="Gateway Timeout"), DispatchUnknown("HTTP 504 gateway timeout")),
        # Sent, then silence: BeadBoard may have started a job, so never "failed".
        (
            raising(httpx.ReadTimeout("timed out")),
            DispatchUnknown("timeout (no whole answer within 1s)"),
        ),
        (
            raising(httpx.RemoteProtocolError("closed")),
            DispatchUnknown("RemoteProtocolError: closed"),
        ),
    ],
)
def test_dispatch_outcomes(transport: httpx.MockTransport, expected: DispatchOutcome) -> None:
    with board_answering(transport) as board:
        assert board.dispatch("bd-1") == expected


def test_dispatch_posts_the_task_id_to_the_route() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"job_id": "j"})

    with board_answering(httpx.MockTransport(handle)) as board:
        board.dispatch("bd-7")
    assert seen[0].method == "POST"
    assert str(seen[0].url) == f"http://beadboard.test{DISPATCH}"
    assert seen[0].read() == b'{"taskId":"bd-7"}'


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        (answering(500), "HTTP 500"),
        (answering(200, json={"busy": "yes"}), "no boolean 'busy'"),
        (answering(200, text="not json"), "no boolean 'busy'"),
        (answering(200, content=NESTED), "no boolean 'busy'"),
        (raising(httpx.ConnectError("refused")), "connection failed"),
    ],
)
def test_status_faults_raise(transport: httpx.MockTransport, message: str) -> None:
    with board_answering(transport) as board, pytest.raises(BeadBoardError, match=message):
        board.agent_busy()


@pytest.mark.parametrize("busy", [True, False])
def test_status_reads_busy(busy: bool) -> None:
    with board_answering(answering(200, json={"busy": busy, "extra": 1})) as board:
        assert board.agent_busy() is busy


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        (answering(200, content=NESTED), "HTTP 200, not a JSON object"),
        (answering(503, text="<html>down</html>"), "HTTP 503, not a JSON object"),
        (answering(200, json={"active": 1, "queued": 0}), "'capacity' missing or not a count"),
    ],
)
def test_health_faults_raise(transport: httpx.MockTransport, message: str) -> None:
    health = AgentHealth(f"http://agent.test{HEALTH}", timeout_seconds=1, transport=transport)
    with pytest.raises(AgentServiceError, match=message):
        health.load()


# -- a whole request is bounded: in time by the timeout, in size by BODY_LIMIT_BYTES --------

TIMEOUT = 1.0
# A whole answer each call would take; the padding makes its drip last 9 s.
BODY = b'{"job_id": "j", "busy": false, "active": 0, "queued": 0, "capacity": 1}' + b" " * 100
STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
HEADERS = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(BODY)
# (sent at once, then dripped one byte every 50 ms: httpx's per-read timeout never fires)
DRIPS = {
    "headers": (STATUS_LINE, HEADERS + b"X-Pad: " + b"p" * 100 + b"\r\n\r\n" + BODY),
    "body": (STATUS_LINE + HEADERS + b"\r\n", BODY),
}


def ask(call: str, url: str) -> object:
    if call == "load":
        health = AgentHealth(f"{url}{HEALTH}", TIMEOUT, plain_http())
        try:
            return health.load()
        finally:
            health.close()
    with BeadBoard(url, TIMEOUT, plain_http()) as board:
        return board.dispatch("bd-1") if call == "dispatch" else board.agent_busy()


@pytest.mark.parametrize("where", sorted(DRIPS))
@pytest.mark.parametrize("call", ["dispatch", "agent_busy", "load"])
def test_an_answer_dripped_byte_by_byte_is_cut_at_the_timeout(where: str, call: str) -> None:
    at_once, drip = DRIPS[where]
    with ScriptedAnswer(at_once, drip=drip, every=0.05) as server:
        started = time.monotonic()
        if call == "dispatch":
            # Sent, then no whole answer: BeadBoard may have started a job.
            expected = DispatchUnknown(f"timeout (no whole answer within {TIMEOUT:g}s)")
            assert ask(call, server.url) == expected
        else:
            fault = AgentServiceError if call == "load" else BeadBoardError
            with pytest.raises(fault, match="timeout"):
                ask(call, server.url)
        assert time.monotonic() - started < TIMEOUT + 1.5  # slack for a loaded machine


def test_a_huge_answer_is_read_no_further_than_the_limit() -> None:
    size = 32 * 2**20
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    with (
        ScriptedAnswer(head, repeat=size) as server,
        BeadBoard(server.url, 5, plain_http()) as board,
    ):
        tracemalloc.start()
        try:
            outcome = board.dispatch("bd-1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert outcome == Dispatched(
        None, 200, Unconfirmed("a body longer than 64 KiB", "", "x" * 60 + "…" + "x" * 59)
    )
    assert peak < 2**20  # the whole body would be 32 MiB
