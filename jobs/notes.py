"""Every note the jobs write on a bead, in one place: each is dated and says who wrote it.

The author is the CronJob that wrote the note, spelled as `kubectl get cronjobs` shows it,
so several instances sharing a database (a coding agent and a reviewer) sign their notes
apart. The pod spec sets it (CRONJOB_NAME); a run started by hand signs as the default
instance's CronJobs do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from jobs.log import iso_utc

# The default instance's CronJobs (components/names.py derives the same).
DISPATCHER = "beads-dispatcher"
REAPER = "beads-reaper"

# The tail every signed note ends with: "(<cronjob>, <RFC 3339 UTC>)".
_SIGNATURE = r"\((?P<by>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?), (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\)"
_DISPATCHED = re.compile(r"^dispatched: job=(?P<job>\S+) " + _SIGNATURE + "$")
_GAVE_UP = re.compile(
    r"dispatch failed \(attempt (?P<attempt>\d+)/\d+\): (?P<reason>.*) — blocking"
)
# Any note of the jobs': a signed one, or a claim ("<cronjob> claimed at <time>").
_OURS = re.compile(_SIGNATURE + r"|[a-z0-9][-a-z0-9]* claimed at \d{4}-\d\d-\d\dT")


def dispatched_job(text: str) -> tuple[str, str] | None:
    """(job id, when) from a `dispatched` record of any instance, or None for other text."""
    match = _DISPATCHED.match(text)
    return (match["job"], match["at"]) if match else None


def gave_up(notes: str) -> tuple[int, str] | None:
    """(attempts, last reason) when the jobs' last note blocked the bead, else None."""
    for line in reversed(notes.splitlines()):
        if match := _GAVE_UP.search(line):
            return int(match["attempt"]), match["reason"]
        if _OURS.search(line):
            return None
    return None


@dataclass(frozen=True)
class DispatcherNotes:
    """The dispatcher's notes, signed `by` its CronJob."""

    by: str = DISPATCHER

    def _signed(self, text: str, now: datetime) -> str:
        return f"{text} ({self.by}, {iso_utc(now)})"

    def claimed(self, now: datetime) -> str:
        return f"{self.by} claimed at {iso_utc(now)}"

    def dispatched(self, job_id: str | None, http_status: int, now: datetime) -> str:
        if job_id is not None:
            return self._signed(f"dispatched: job={job_id}", now)
        # A 2xx is BeadBoard saying it took the bead; without an id we cannot say which job.
        return self._signed(
            f"dispatched: BeadBoard answered HTTP {http_status} without a job id, so the job "
            f"cannot be named; not sent again",
            now,
        )

    def dispatched_unconfirmed(
        self, http_status: int, body: str, content_type: str, now: datetime
    ) -> str:
        # Taken as sent all the same: a resend risks the agent doing the work twice.
        return self._signed(
            f"dispatched, unconfirmed: HTTP {http_status} with {body} "
            f"({content_type or 'no content type'}); check BeadBoard's ingress. Not sent again",
            now,
        )

    def _back_to_open(self, why: str, now: datetime) -> str:
        """A bead back in the queue through no fault of its own: no attempt is charged."""
        return self._signed(f"{why}; back to open, not counted as a failed attempt", now)

    def agent_busy(self, detail: str, now: datetime) -> str:
        return self._back_to_open(f"agent busy ({detail})", now)

    def service_down(self, reason: str, now: datetime) -> str:
        return self._signed(
            f"not sent: agent service unavailable ({reason}); back to open, no attempt counted",
            now,
        )

    def dispatch_failed(self, attempt: int, max_attempts: int, reason: str, now: datetime) -> str:
        text = f"dispatch failed (attempt {attempt}/{max_attempts}): {reason}"
        if attempt >= max_attempts:
            text += " — blocking; fix the cause, then set the bead back to open to retry"
        else:
            text += "; back to open"
        return self._signed(text, now)

    def _left_to_the_reaper(
        self, what: str, threshold_minutes: int, now: datetime, then: str = ""
    ) -> str:
        """A bead only the reaper can settle now: it blocks it after the threshold."""
        return self._signed(
            f"{what} the reaper blocks this bead after {threshold_minutes}m{then}", now
        )

    def dispatch_unknown(self, reason: str, threshold_minutes: int, now: datetime) -> str:
        sent = f"dispatch outcome unknown: {reason} after the request was sent; not sent again."
        return self._left_to_the_reaper(
            f"{sent} If the agent started, its notes follow; if not,", threshold_minutes, now
        )

    def lost_lock(self, reason: str, threshold_minutes: int, now: datetime) -> str:
        # Written without the lock (a comment is a row of its own, it races with nothing);
        # the stage stays `sending`, because only a lock holder may change the bead.
        return self._left_to_the_reaper(
            f"{self.by} lost its dispatch lock ({reason}) before sending: NOT sent to "
            f"BeadBoard. The bead stays in_progress;",
            threshold_minutes,
            now,
            then=", then set it back to open to dispatch it",
        )

    def not_sent(self, reason: str, now: datetime) -> str:
        return self._back_to_open(f"not dispatched: {reason}", now)


@dataclass(frozen=True)
class ReaperNotes:
    """The reaper's notes, signed `by` its CronJob."""

    by: str = REAPER

    def _signed(self, text: str, now: datetime) -> str:
        return f"{self.by}: {text} ({self.by}, {iso_utc(now)})"

    def reaped(self, minutes_idle: int, threshold_minutes: int, now: datetime) -> str:
        return self._signed(
            f"no progress for {minutes_idle}m (threshold {threshold_minutes}m) — blocking", now
        )

    def requeued_unsent(self, claimed_at: datetime, now: datetime) -> str:
        return self._signed(
            f"claimed at {iso_utc(claimed_at)} but never sent to BeadBoard (the dispatcher "
            f"that claimed it no longer holds the dispatch lock); back to open, not counted "
            f"as a failed attempt",
            now,
        )

    def reaped_unknown_outcome(
        self, minutes_idle: int, threshold_minutes: int, now: datetime
    ) -> str:
        return self._signed(
            f"no progress for {minutes_idle}m (threshold {threshold_minutes}m) — blocking; "
            f"the dispatcher stopped while sending, so BeadBoard may or may not have started "
            f"a job: check the agent before reopening",
            now,
        )
