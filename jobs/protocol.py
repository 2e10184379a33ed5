"""The bead protocol both jobs share: a bead's life, what a run can come to, exit codes.

One definition of a bead's life for the dispatcher and the reaper alike: open (queued) ->
in_progress with stage `claimed` (lock held, not yet sent) -> stage `sending` (about to POST,
or sent with no answer) -> stage cleared (sent) -> the agent's own notes, close, or the
reaper's `blocked`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """bd 1.0.2's statuses, as far as the jobs read or write them."""

    OPEN = "open"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"


# Issue types `bd ready` never offers (bd 1.0.2, issueops.GetReadyWorkInTx): bd's own plumbing.
NOT_WORK_TYPES = frozenset({"merge-request", "gate", "molecule", "message", "agent", "role", "rig"})
# Dependency types through which an open bead holds another back (bd's blocked set).
BLOCKING_DEPENDENCIES = ("blocks", "conditional-blocks", "waits-for")

# Failed attempts are counted on the bead itself, so the count survives pods.
ATTEMPTS_KEY = "auto_dispatch_attempts"
# Where a claimed bead is in its hand-off. Lets the reaper tell "never sent" (safe to
# requeue) from "maybe sent" (must not be sent twice). Cleared once the POST is recorded.
STAGE_KEY = "auto_dispatch_stage"
# Whose dispatcher holds a bead at stage `claimed`: the reaper requeues only its own
# assignee's claims, the ones its lock covers (a bead re-assigned mid-hand-off stays with the
# dispatcher that claimed it). Cleared with the stage `claimed`.
CLAIMED_FOR_KEY = "auto_dispatch_claimed_for"


class Stage(StrEnum):
    CLAIMED = "claimed"
    SENDING = "sending"


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a failed dispatch or a fault of bd / BeadBoard / the lock service
    CONFIG = 2  # bad configuration: one line on stderr


class Outcome(StrEnum):
    """What a poll of either job came to; declared worst first, so a run reports its worst."""

    ERROR = "error"
    LOCK_LOST = "lock_lost"
    BLOCKED_AFTER_FAILURES = "blocked_after_failures"
    SERVICE_DOWN = "service_down"  # BeadBoard or the agent service down: no bead was charged
    DISPATCH_FAILED = "dispatch_failed"
    DISPATCH_UNKNOWN = "dispatch_unknown"
    DISPATCHED = "dispatched"
    REAPED = "reaped"
    AGENT_BUSY_ON_DISPATCH = "agent_busy_on_dispatch"
    STOPPED = "stopped"
    PAUSED = "paused"  # the kill switch ended the run (a window sees it at its next poll)
    LOCK_BUSY = "lock_busy"
    AGENT_BUSY = "agent_busy"
    DRY_RUN = "dry_run"
    NOTHING_CLAIMABLE = "nothing_claimable"
    NOTHING_DUE = "nothing_due"
    QUEUE_EMPTY = "queue_empty"


_RANK = {outcome: index for index, outcome in enumerate(Outcome)}


def worst(*outcomes: Outcome) -> Outcome:
    return min(outcomes, key=_RANK.__getitem__)


class ReapAction(StrEnum):
    """What the reaper does to a bead it holds the lock for."""

    REQUEUE = "requeue"  # claimed by a dispatcher that no longer holds the lock, never sent
    BLOCK = "block"  # no sign of life for longer than the threshold


def quoted(value: str) -> str:
    """A bd query string literal: bd's lexer takes "..." with backslash escapes.

    Without quotes a value such as `agent@corp` is a syntax error in bd's query language.
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queue_expression(assignee: str, status: Status) -> str:
    """The bd query for one assignee's beads in one status."""
    return f"assignee={quoted(assignee)} AND status={status}"
