"""The BeadBoard stand-in the tests, the demo and the bench talk to: it must behave, over a
socket and in process."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from devtools.localservices.beadboard import BeadBoardStub, Reply
from jobs.beadboard import AgentBusy, BeadBoard, Dispatched
from tests.support.in_process import stub_transport
from tests.support.routes import DISPATCH, HEALTH, STATUS


def _call(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_stub_defaults_and_records_requests(beadboard: BeadBoardStub) -> None:
    assert _call(beadboard.url + STATUS) == (200, {"busy": False})
    assert _call(beadboard.url + DISPATCH, "POST", {"taskId": "bd-1"}) == (
        200,
        {"job_id": "job-1"},
    )
    assert _call(beadboard.url + HEALTH) == (
        200,
        {"status": "ok", "busy": False, "active": 0, "queued": 0, "capacity": 1},
    )
    assert _call(beadboard.url + "/nope")[0] == 404

    dispatches = beadboard.requests_to(DISPATCH)
    assert [(r.method, r.json) for r in dispatches] == [("POST", {"taskId": "bd-1"})]
    assert len(beadboard.requests) == 4
    beadboard.clear()
    assert beadboard.requests == []


def test_stub_replays_programmed_replies_then_falls_back(beadboard: BeadBoardStub) -> None:
    beadboard.program(
        DISPATCH,
        Reply(status=409, json={"error": "Agent is busy"}),
        Reply(status=502, body=b"upstream exploded"),
    )
    assert _call(beadboard.url + DISPATCH, "POST", {"taskId": "a"}) == (
        409,
        {"error": "Agent is busy"},
    )
    with pytest.raises(json.JSONDecodeError):
        _call(beadboard.url + DISPATCH, "POST", {"taskId": "b"})
    assert _call(beadboard.url + DISPATCH, "POST", {"taskId": "c"}) == (
        200,
        {"job_id": "job-1"},
    )
    assert beadboard.pending(DISPATCH) == 0


def test_stub_handler_answers_from_the_request(beadboard: BeadBoardStub) -> None:
    beadboard.set_handler(
        STATUS, lambda request: Reply(json={"busy": request.query.get("x") == ["1"]})
    )
    assert _call(beadboard.url + STATUS + "?x=1") == (200, {"busy": True})
    assert _call(beadboard.url + STATUS) == (200, {"busy": False})


def test_stub_delay_holds_the_whole_answer(beadboard: BeadBoardStub) -> None:
    beadboard.program(STATUS, Reply(delay=2.0, json={"busy": False}))
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _call(beadboard.url + STATUS, timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert [r.path for r in beadboard.requests] == [STATUS]


def test_stub_stall_sends_the_headers_and_holds_the_body(beadboard: BeadBoardStub) -> None:
    beadboard.program(STATUS, Reply(stall=2.0, json={"busy": False}))
    connection = http.client.HTTPConnection("127.0.0.1", beadboard.port, timeout=0.3)
    connection.request("GET", STATUS)
    response = connection.getresponse()
    assert response.status == 200
    with pytest.raises(TimeoutError):
        response.read()
    connection.close()
    assert [r.path for r in beadboard.requests] == [STATUS]


def test_stub_drop_hangs_up_without_a_byte(beadboard: BeadBoardStub) -> None:
    beadboard.program(DISPATCH, Reply(drop=True))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        _call(beadboard.url + DISPATCH, "POST", {"taskId": "x"})
    assert [r.path for r in beadboard.requests] == [DISPATCH]


# -- the same stub in process (tests/support/in_process.py): what the job harness uses -------


def test_in_process_answers_are_the_stubs_own(beadboard: BeadBoardStub) -> None:
    beadboard.program(DISPATCH, Reply(status=409, json={"error": "Agent is busy"}))
    with BeadBoard(beadboard.url, 2, stub_transport(beadboard)) as board:
        assert board.dispatch("bd-1") == AgentBusy("Agent is busy")
        assert board.dispatch("bd-2") == Dispatched("job-1")


def test_in_process_requests_are_recorded(beadboard: BeadBoardStub) -> None:
    with BeadBoard(beadboard.url, 2, stub_transport(beadboard)) as board:
        board.dispatch("bd-1")
    [request] = beadboard.requests
    assert (request.method, request.path, request.json) == ("POST", DISPATCH, {"taskId": "bd-1"})


@pytest.mark.parametrize("reply", [Reply(delay=1), Reply(stall=1), Reply(drop=True)])
def test_in_process_refuses_a_reply_only_a_socket_can_give(
    beadboard: BeadBoardStub, reply: Reply
) -> None:
    beadboard.program(DISPATCH, reply)
    with (
        BeadBoard(beadboard.url, 2, stub_transport(beadboard)) as board,
        pytest.raises(AssertionError, match="needs a real socket"),
    ):
        board.dispatch("bd-1")
