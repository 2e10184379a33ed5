"""JSON-lines event log: one object per line, every line tagged with the run id."""

from __future__ import annotations

import json
import resource
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

Clock = Callable[[], datetime]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def iso_utc(moment: datetime) -> str:
    """RFC 3339 UTC with a Z, second precision: what notes and logs show.

    A naive datetime is taken to be UTC already.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def excerpt(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters: a longer one loses its middle to `…`.

    Both ends are kept because bd often names the cause last, and an HTTP body says what it
    is first. No spaces around the `…`, so a cut job id is still one word in a note.
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    tail = (limit - 1) // 2
    return f"{flat[: limit - 1 - tail]}…{flat[len(flat) - tail :]}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def peak_memory() -> dict[str, float]:
    """Peak resident memory in MiB, as `tick.done` reports it (Linux gives ru_maxrss in KiB).

    python_peak_rss_mib: this process's own peak.
    child_peak_rss_mib: the largest peak of any child that has exited (the bd processes), and
    not bd's own peak: a child's count starts from the memory of the process it was forked
    from (Linux keeps that high-water mark across exec), so this figure is at least Python's
    size when the largest bd was started, and bd's own peak cannot be told apart from it.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"python_peak_rss_mib": round(own, 1), "child_peak_rss_mib": round(children, 1)}


class EventLog:
    def __init__(self, job: str, run_id: str, clock: Clock, stream: IO[str] | None = None) -> None:
        self.job = job
        self.run_id = run_id
        self._clock = clock
        self._stream = stream if stream is not None else sys.stdout

    def event(self, name: str, **fields: Any) -> None:
        self._emit(name, "info", fields)

    def error(self, name: str, **fields: Any) -> None:
        self._emit(name, "error", fields)

    def warning(self, name: str, **fields: Any) -> None:
        self._emit(name, "warning", fields)

    def _emit(self, name: str, level: str, fields: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "ts": iso_utc(self._clock()),
            "level": level,
            "job": self.job,
            "run_id": self.run_id,
            "event": name,
        }
        record.update(fields)
        self._stream.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self._stream.flush()
