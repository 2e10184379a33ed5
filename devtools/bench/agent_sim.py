"""A loopback BeadBoard + claude-agent-service whose agent "runs" take a set time.

Speaks the routes the dispatcher uses (`/api/agent-status`, `/api/agent-dispatch`, and the
agent service's `/health`) and records when each bead was dispatched and how long its
slot was busy, so the benchmark can compute latency and utilisation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from devtools.localservices.beadboard import BeadBoardStub, RecordedRequest, Reply


@dataclass(frozen=True)
class AgentJob:
    bead: str
    started: float
    ends: float


class AgentSimulator:
    def __init__(self, capacity: int, run_seconds: float) -> None:
        self.capacity = capacity
        self.run_seconds = run_seconds
        self.jobs: list[AgentJob] = []
        self.refused = 0
        self._lock = threading.Lock()
        self.stub = BeadBoardStub()
        self.stub.set_handler("/api/agent-status", self._status)
        self.stub.set_handler("/api/agent-dispatch", self._dispatch)
        self.stub.set_handler("/health", self._health)

    def __enter__(self) -> AgentSimulator:
        self.stub.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stub.close()

    @property
    def url(self) -> str:
        return self.stub.url

    def active(self, now: float | None = None) -> int:
        moment = time.monotonic() if now is None else now
        return sum(1 for job in self.jobs if job.started <= moment < job.ends)

    def _status(self, request: RecordedRequest) -> Reply:
        with self._lock:
            return Reply(json={"busy": self.active() >= self.capacity})

    def _health(self, request: RecordedRequest) -> Reply:
        with self._lock:
            active = self.active()
            return Reply(
                json={
                    "status": "ok",
                    "busy": active >= self.capacity,
                    "active": active,
                    "queued": 0,
                    "capacity": self.capacity,
                }
            )

    def _dispatch(self, request: RecordedRequest) -> Reply:
        bead = str((request.json or {}).get("taskId", ""))
        with self._lock:
            if self.active() >= self.capacity:
                self.refused += 1
                return Reply(status=409, json={"error": "Agent is busy"})
            now = time.monotonic()
            self.jobs.append(AgentJob(bead, now, now + self.run_seconds))
            return Reply(json={"job_id": f"sim-{len(self.jobs)}"})

    def dispatched_at(self) -> dict[str, float]:
        return {job.bead: job.started for job in self.jobs}

    def refill_gaps(self) -> list[float]:
        """Seconds from each slot freeing to the dispatch that fills it again.

        Under a backlog every freed slot is refilled by the next dispatch not yet matched to
        an earlier free; frees after the last dispatch (the window had ended) are not gaps.
        """
        starts = sorted(job.started for job in self.jobs)
        frees = sorted(job.ends for job in self.jobs)
        gaps: list[float] = []
        next_start = 0
        for free in frees:
            while next_start < len(starts) and starts[next_start] < free:
                next_start += 1
            if next_start == len(starts):
                break
            gaps.append(starts[next_start] - free)
            next_start += 1
        return gaps

    def busy_slot_seconds(self, start: float, end: float) -> float:
        return sum(max(0.0, min(job.ends, end) - max(job.started, start)) for job in self.jobs)
