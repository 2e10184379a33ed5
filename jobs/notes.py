"""Every note the jobs write on a bead, in one place: each is dated and says who wrote it."""

from __future__ import annotations

import re
from datetime import datetime

from jobs.log import iso_utc

# The CronJobs' names: who wrote a note, spelled as `kubectl get cronjobs` shows it.
DISPATCHER = "beads-dispatcher"
REAPER = "beads-reaper"


def claimed(now: datetime) -> str:
    return f"{DISPATCHER} claimed at {iso_utc(now)}"


def dispatched(job_id: str | None, http_status: int, now: datetime) -> str:
    if job_id is not None:
        return f"dispatched: job={job_id} ({DISPATCHER}, {iso_utc(now)})"
    # A 2xx is BeadBoard saying it took the bead; without an id we cannot say which job.
    return (
        f"dispatched: BeadBoard answered HTTP {http_status} without a job id, so the job "
        f"cannot be named; not sent again ({DISPATCHER}, {iso_utc(now)})"
    )


def dispatched_unconfirmed(http_status: int, body: str, content_type: str, now: datetime) -> str:
    # Taken as sent all the same: a resend risks the agent doing the work twice.
    return (
        f"dispatched, unconfirmed: HTTP {http_status} with {body} "
        f"({content_type or 'no content type'}); check BeadBoard's ingress. Not sent again "
        f"({DISPATCHER}, {iso_utc(now)})"
    )


_DISPATCHED = re.compile(r"^dispatched: job=(?P<job>\S+) \(" + DISPATCHER + r", (?P<at>[^)]+)\)$")


def dispatched_job(text: str) -> tuple[str, str] | None:
    """(job id, when) from a `dispatched` record, or None for any other text."""
    match = _DISPATCHED.match(text)
    return (match["job"], match["at"]) if match else None


def agent_busy(detail: str, now: datetime) -> str:
    return (
        f"agent busy ({detail}); back to open, not counted as a failed attempt "
        f"({DISPATCHER}, {iso_utc(now)})"
    )


def service_down(reason: str, now: datetime) -> str:
    return (
        f"not sent: agent service unavailable ({reason}); back to open, no attempt counted "
        f"({DISPATCHER}, {iso_utc(now)})"
    )


def dispatch_failed(attempt: int, max_attempts: int, reason: str, now: datetime) -> str:
    text = f"dispatch failed (attempt {attempt}/{max_attempts}): {reason}"
    if attempt >= max_attempts:
        text += " — blocking; fix the cause, then set the bead back to open to retry"
    else:
        text += "; back to open"
    return f"{text} ({DISPATCHER}, {iso_utc(now)})"


_GAVE_UP = re.compile(
    r"dispatch failed \(attempt (?P<attempt>\d+)/\d+\): (?P<reason>.*) — blocking"
)


def gave_up(notes: str) -> tuple[int, str] | None:
    """(attempts, last reason) when the dispatcher's last note blocked the bead, else None."""
    for line in reversed(notes.splitlines()):
        if match := _GAVE_UP.search(line):
            return int(match["attempt"]), match["reason"]
        if DISPATCHER in line or REAPER in line:
            return None
    return None


def dispatch_unknown(reason: str, threshold_minutes: int, now: datetime) -> str:
    return (
        f"dispatch outcome unknown: {reason} after the request was sent; not sent again. "
        f"If the agent started, its notes follow; if not, the reaper blocks this bead after "
        f"{threshold_minutes}m ({DISPATCHER}, {iso_utc(now)})"
    )


def lost_lock(reason: str, threshold_minutes: int, now: datetime) -> str:
    # Written without the lock (a comment is a row of its own, it races with nothing); the
    # stage stays `sending`, because only a lock holder may change the bead.
    return (
        f"{DISPATCHER} lost its dispatch lock ({reason}) before sending: NOT sent to "
        f"BeadBoard. The bead stays in_progress; the reaper blocks it after "
        f"{threshold_minutes}m, then set it back to open to dispatch it "
        f"({DISPATCHER}, {iso_utc(now)})"
    )


def reaped(minutes_idle: int, threshold_minutes: int, now: datetime) -> str:
    return (
        f"{REAPER}: no progress for {minutes_idle}m (threshold {threshold_minutes}m) — blocking "
        f"({REAPER}, {iso_utc(now)})"
    )


def not_sent(reason: str, now: datetime) -> str:
    return (
        f"not dispatched: {reason}; back to open, not counted as a failed attempt "
        f"({DISPATCHER}, {iso_utc(now)})"
    )


def requeued_unsent(claimed_at: datetime, now: datetime) -> str:
    return (
        f"{REAPER}: claimed at {iso_utc(claimed_at)} but never sent to BeadBoard (the dispatcher "
        f"that claimed it no longer holds the dispatch lock); back to open, not counted as a "
        f"failed attempt ({REAPER}, {iso_utc(now)})"
    )


def reaped_unknown_outcome(minutes_idle: int, threshold_minutes: int, now: datetime) -> str:
    return (
        f"{REAPER}: no progress for {minutes_idle}m (threshold {threshold_minutes}m) — blocking; "
        f"the dispatcher stopped while sending, so BeadBoard may or may not have started a job: "
        f"check the agent before reopening ({REAPER}, {iso_utc(now)})"
    )
