"""A loopback HTTP server that writes a scripted answer at its own pace, byte by byte if told.

What the BeadBoard stub cannot do: drip an answer one byte at a time (each byte resets
httpx's per-read timeout) or pour out a body far longer than anyone should read.

    with ScriptedAnswer(b"HTTP/1.1 200 OK\\r\\n", drip=b"X-A: b\\r\\n\\r\\n", every=0.05) as server:
        ...  # point the client at server.url
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class ScriptedAnswer:
    """Answers every request with `at_once`, then `drip` in `chunk`-byte pieces `every` seconds
    apart, then `repeat` bytes of filler (`filler` over and over, written as fast as read)."""

    def __init__(
        self,
        at_once: bytes,
        *,
        drip: bytes = b"",
        every: float = 0.0,
        chunk: int = 1,
        repeat: int = 0,
        filler: bytes = b"x" * 65536,
    ) -> None:
        self.at_once = at_once
        self.drip = drip
        self.every = every
        self.chunk = chunk
        self.repeat = repeat
        self.filler = filler
        self.requests = 0
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # a blocked accept() does not see the listener close
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> ScriptedAnswer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            connection.settimeout(None)
            self.requests += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            _read_request(connection)
            connection.sendall(self.at_once)
            for start in range(0, len(self.drip), self.chunk):
                if self._stopping.wait(self.every):
                    return
                connection.sendall(self.drip[start : start + self.chunk])
            left = self.repeat
            while left > 0 and not self._stopping.is_set():
                piece = self.filler if left >= len(self.filler) else self.filler[:left]
                connection.sendall(piece)
                left -= len(piece)


def _read_request(connection: socket.socket) -> None:
    """The request's head and its body (by Content-Length): the answer starts after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = connection.recv(65536)
        if not more:
            return
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = connection.recv(65536)
        if not more:
            return
        body += more
