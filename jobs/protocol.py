"""The bead protocol both jobs share: which beads are queued, how far a hand-off got, exit codes.

Kept apart from either job so the dispatcher and the reaper read one definition of a bead's
life: open (queued) -> in_progress with stage `claimed` (lock held, not yet sent) -> stage
`sending` (about to POST, or sent with no answer) -> stage cleared (sent) -> the agent's own
notes, close, or the reaper's `blocked`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

# Failed attempts are counted on the bead itself, so the count survives pods.
ATTEMPTS_KEY = "auto_dispatch_attempts"
# Where a claimed bead is in its hand-off. Lets the reaper tell "never sent" (safe to
# requeue) from "maybe sent" (must not be sent twice). Cleared once the POST is recorded.
STAGE_KEY = "auto_dispatch_stage"


class Stage(StrEnum):
    CLAIMED = "claimed"
    SENDING = "sending"


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a failed dispatch or a fault of bd / BeadBoard / the lock service
    CONFIG = 2  # bad configuration: one line on stderr


def quoted(value: str) -> str:
    """A bd query string literal: bd's lexer takes "..." with backslash escapes.

    Without quotes a value such as `agent@corp` is a syntax error in bd's query language.
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queue_expression(assignee: str, status: str) -> str:
    return f"assignee={quoted(assignee)} AND status={status}"
