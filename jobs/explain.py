"""`python3 -m jobs explain <bead-id>`: why a bead is not going out, one line per reason.

An operator's question, answered from bd's own verdicts where bd gives them: `bd ready` for
"can it start", `bd blocked` for what holds it back, `bd show` for its state. It reads and
asks; it never writes a bead, takes the lock or dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobs import notes
from jobs.beadboard import AgentServiceError, BeadBoardError
from jobs.beads import BdClient, Bead
from jobs.dispatch import eligible_in_order
from jobs.log import Clock, iso_utc
from jobs.protocol import BLOCKING_DEPENDENCIES, NOT_WORK_TYPES, Status
from jobs.rowsize import too_large
from jobs.settings import JobSettings, env_name

# How many agent slots are free right now; raises BeadBoardError (or AgentServiceError, with
# agentHealthUrl) when it cannot be told.
FreeSlots = Callable[[], int]


@dataclass
class Explainer:
    settings: JobSettings
    bd: BdClient
    free_slots: FreeSlots
    switch_on: bool
    clock: Clock

    def explain(self, bead_id: str) -> list[str]:
        """One line per reason `bead_id` is not going out, or where it stands if it is."""
        row = self.bd.show_raw(bead_id)
        bead = Bead.model_validate(row)
        now = self.clock()
        reasons = [
            *self._ownership(bead),
            *self._state(bead),
            *self._size(bead),
            *self._kind(row),
            *self._deferral(bead, now),
            *self._graph(bead_id, row, now),
        ]
        if not self.switch_on:
            reasons.append(
                f"kill switch off ({env_name('dispatcher_enabled')}=false): nothing is dispatched"
            )
        if reasons:
            return reasons
        return self._place_in_line(bead)

    # -- what the bead itself says ------------------------------------------------------

    def _ownership(self, bead: Bead) -> list[str]:
        agent = self.settings.agent_assignee
        if bead.assignee == agent:
            return []
        holder = f"assigned to {bead.assignee!r}" if bead.assignee else "unassigned"
        return [f"not assigned to the agent: {holder}; the dispatcher serves {agent!r}"]

    def _state(self, bead: Bead) -> list[str]:
        reasons = []
        if bead.status == Status.IN_PROGRESS and (record := _last_dispatch(bead)):
            job, at = record
            reasons.append(f"dispatched as job {job} at {at}; status in_progress")
        elif bead.status == Status.BLOCKED and (failure := notes.gave_up(bead.notes)):
            attempts, reason = failure
            reasons.append(
                f"blocked after {attempts} failed attempts (last: {reason}); "
                "fix the cause, then set it back to open"
            )
        elif bead.status != Status.OPEN:
            reasons.append(f"status is {bead.status}, not open")
        if not bead.has_acceptance_criteria:
            reasons.append("no acceptance criteria: the agent needs them to know when it is done")
        return reasons

    def _size(self, bead: Bead) -> list[str]:
        if bead.status not in (Status.OPEN, Status.IN_PROGRESS):
            return []
        reason = too_large(bead.stored_bytes)
        return [] if reason is None else [reason]

    def _kind(self, row: dict[str, Any]) -> list[str]:
        kind = str(row.get("issue_type") or "")
        reasons = []
        if kind in NOT_WORK_TYPES:
            reasons.append(f"type {kind!r}: bd ready never offers it")
        flags = [flag for flag in ("pinned", "ephemeral") if row.get(flag)]
        return reasons + [f"{flag}: bd ready never offers it" for flag in flags]

    def _deferral(self, bead: Bead, now: datetime) -> list[str]:
        if bead.defer_until is not None and bead.deferred_at(now):
            return [f"deferred until {iso_utc(bead.defer_until)}"]
        return []

    # -- what the dependency graph says (bd's blocked set) ------------------------------

    def _graph(self, bead_id: str, row: dict[str, Any], now: datetime) -> list[str]:
        if row.get("status") in ("closed", "pinned"):
            return []  # not in bd's blocked set whatever its dependencies say
        blocked = self.bd.blocked()
        linked = {str(dep.get("id")): dep for dep in row.get("dependencies") or []}
        parent = str(row.get("parent") or "")
        reasons = []
        blockers = [b for b in blocked.get(bead_id, []) if b != parent or b in _blocking(linked)]
        if blockers:
            reasons.append("blocked by " + ", ".join(_describe(b, linked) for b in blockers))
        elif bead_id in blocked and parent:
            reasons.append(self._parent_blocked(parent, blocked))
        if parent:
            parent_row = self.bd.show_raw(parent)
            until = Bead.model_validate(parent_row).defer_until
            if until is not None and until > now:
                reasons.append(f"parent {parent} deferred until {iso_utc(until)}")
        return reasons

    def _parent_blocked(self, parent: str, blocked: dict[str, list[str]]) -> str:
        holders = ", ".join(blocked.get(parent, [])) or "its own parent"
        return f"parent {parent} is blocked (by {holders})"

    # -- ready: where it stands ---------------------------------------------------------

    def _place_in_line(self, bead: Bead) -> list[str]:
        ready = self.bd.ready(self.settings.agent_assignee)
        line = [b.id for b in eligible_in_order(ready.beads, self.settings.agent_assignee)]
        if bead.id not in line:
            return [f"bd ready does not offer it; `bd ready --explain` says why ({len(line)} do)"]
        ahead = line[: line.index(bead.id)]
        try:
            free = self.free_slots()
        except (BeadBoardError, AgentServiceError) as exc:
            return [f"ready, number {len(ahead) + 1} in line; agent slots unknown ({exc})"]
        if free == 0:
            return [f"waiting for a free agent slot (number {len(ahead) + 1} in line)"]
        if len(ahead) < free:
            return ["next in line: the next poll dispatches it"]
        return [
            f"waiting for a free agent slot: {free} free, {len(ahead)} ahead of it "
            f"({', '.join(ahead[:5])}{', …' if len(ahead) > 5 else ''})"
        ]


def _last_dispatch(bead: Bead) -> tuple[str, str] | None:
    for comment in reversed(bead.comments):
        if record := notes.dispatched_job(comment.text):
            return record
    return None


def _blocking(linked: dict[str, dict[str, Any]]) -> set[str]:
    return {
        bead_id
        for bead_id, dep in linked.items()
        if dep.get("dependency_type") in BLOCKING_DEPENDENCIES
    }


def _describe(blocker: str, linked: dict[str, dict[str, Any]]) -> str:
    dep = linked.get(blocker)
    if dep is None:
        return blocker
    kind = dep.get("dependency_type", "")
    via = {"blocks": "", "waits-for": ", waits-for: until its children are closed"}
    return f"{blocker} ({dep.get('status', '?')}{via.get(kind, f', {kind}')})"
