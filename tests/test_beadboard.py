"""BeadBoard client: every answer and transport fault maps to one outcome with a short reason."""

from __future__ import annotations

import httpx
import pytest

from jobs.beadboard import (
    AgentBusy,
    BeadBoard,
    BeadBoardError,
    Dispatched,
    DispatchFailed,
    DispatchOutcome,
    DispatchUnknown,
)


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
        (answering(202), Dispatched(None, 202)),
        (answering(200, json={"job_id": "  "}), Dispatched(None)),
        (answering(200, json={"job_id": True}), Dispatched(None)),
        (answering(200, json={"status": "queued"}), Dispatched(None)),
        (answering(200, text="<html>ok</html>"), Dispatched(None)),
        (answering(204), Dispatched(None, 204)),
        (answering(200, json={"job_id": "j" * 200}), Dispatched("j" * 79 + "…")),
        (answering(302, headers={"location": "/login"}), DispatchFailed("HTTP 302")),
        (answering(409, json={"error": "Agent is busy"}), AgentBusy("Agent is busy")),
        (answering(409, text="busy"), AgentBusy("Agent is busy")),
        (
            answering(400, json={"error": "bead not found"}),
            DispatchFailed("HTTP 400 bead not found"),
        ),
        (answering(500, json={"error": "x" * 500}), DispatchFailed("HTTP 500 " + "x" * 159 + "…")),
        (answering(502, text="Bad Gateway"), DispatchFailed("HTTP 502")),
        (
            raising(httpx.ConnectError("[Errno 111] Connection refused")),
            DispatchFailed("connection failed ([Errno 111] Connection refused)"),
        ),
        (raising(httpx.ConnectTimeout("timed out")), DispatchFailed("timeout (ConnectTimeout)")),
        # Sent, then silence: BeadBoard may have started a job, so never "failed".
        (raising(httpx.ReadTimeout("timed out")), DispatchUnknown("timeout (ReadTimeout)")),
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
    assert str(seen[0].url) == "http://beadboard.test/api/agent-dispatch"
    assert seen[0].read() == b'{"taskId":"bd-7"}'


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        (answering(500), "HTTP 500"),
        (answering(200, json={"busy": "yes"}), "no boolean 'busy'"),
        (answering(200, text="not json"), "no boolean 'busy'"),
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
