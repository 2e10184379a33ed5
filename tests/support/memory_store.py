"""An in-memory BeadStore: bd 1.0.2's semantics where the jobs rely on them (docs/bd-contract.md).

Rows are kept as `bd --json` prints them and read through BdClient's own parsing (each Bead made
by Bead.model_validate), so a row the jobs cannot read (`add(raw=...)`, `edit`) is `unreadable`.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

# What BdClient makes of the rows bd prints: the double stands in for bd, not for the client.
from jobs.beads import BdError, BdRejected, BdTooLarge, Bead, Change, QueryResult, _beads_from
from jobs.log import Clock, iso_utc
from jobs.protocol import NOT_WORK_TYPES, Status, queue_expression
from jobs.rowsize import stored_size

Method = Literal["queue", "ready", "show", "update", "update_many", "comment"]
# The bd subcommand behind each method, so injected errors read like BdClient's.
SUBCOMMAND = {
    "queue": "query",
    "ready": "ready",
    "show": "show",
    "update": "update",
    "update_many": "update",
    "comment": "comments",
}
# bd's toJSONValue: `--set-metadata k=2` stores the number 2 (true/false/null likewise).
_JSON_LITERAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Call:
    method: Method
    bead: str | None  # None for a queue query
    args: dict[str, Any]  # what the job passed (for update: only the arguments it set)


@dataclass(frozen=True)
class Dependency:
    """`bd dep add ISSUE ON --type KIND`: ISSUE depends on ON."""

    issue: str
    on: str
    kind: str = "blocks"  # blocks, conditional-blocks, waits-for, parent-child, related...
    gate: str = "all-children"  # waits-for only: all-children or any-children


@dataclass(frozen=True)
class _Rule:
    """A fault or a hook: `effect` runs on each matching call, before or after its work."""

    method: Method | None
    nth: int | None  # 1-based, among calls of `method` (of any method when it is None)
    bead: str | None
    after_work: bool
    effect: Callable[[Call], object]

    def matches(self, call: Call, counts: Counter[str]) -> bool:
        count = counts[call.method] if self.method else counts.total()
        return (
            self.method in (None, call.method)
            and self.nth in (None, count)
            and self.bead in (None, call.bead)
        )


class MemoryStore:
    def __init__(self, clock: Clock, actor: str = "agent", row_limit: int | None = None) -> None:
        self.clock = clock
        self.actor = actor  # who BdClient runs bd as: the claimer, the comments' author
        # bd's events.old_value limit (jobs/rowsize.py): an update of a row past it fails.
        self.row_limit = row_limit
        self.rows: dict[str, dict[str, Any]] = {}
        self.dependencies: list[Dependency] = []
        self.log: list[Call] = []
        self._counts: Counter[str] = Counter()
        self._rules: list[_Rule] = []

    # -- seeding and inspection: not calls, so never logged and never faulted ---------------

    def add(
        self,
        title: str = "task",
        *,
        assignee: str = "agent",
        acceptance: str = "it works",
        priority: int = 2,
        status: str = "open",
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
        defer_until: datetime | None = None,
        issue_type: str = "task",
        parent: str | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> str:
        """A bead as bd prints it; `raw` fields go in as given (say, metadata that is a list)."""
        bead_id = f"tb-{len(self.rows) + 1:03d}"
        created = created_at or self.clock()
        self.rows[bead_id] = {
            "id": bead_id,
            "title": title,
            "status": str(status),
            "priority": priority,
            "assignee": assignee,
            "acceptance_criteria": acceptance,
            "notes": "",
            "created_at": iso_utc(created),
            "updated_at": iso_utc(updated_at or created),
            "issue_type": issue_type,
            "metadata": dict(metadata or {}),
            "comments": [],
        }
        if defer_until is not None:
            self.rows[bead_id]["defer_until"] = iso_utc(defer_until)
        if parent is not None:
            self.depend(bead_id, parent, "parent-child")
        self.edit(bead_id, **(raw or {}))
        return bead_id

    def depend(self, issue: str, on: str, kind: str = "blocks", gate: str = "all-children") -> None:
        """`bd dep add issue on --type kind`."""
        self.dependencies.append(Dependency(issue, on, kind, gate))

    def edit(self, bead_id: str, **fields: Any) -> None:
        """Change a row behind the jobs' back: a human's write, or a shape bd should not print."""
        self.rows[bead_id].update(
            {k: iso_utc(v) if isinstance(v, datetime) else v for k, v in fields.items()}
        )

    def bead(self, bead_id: str) -> Bead:
        return Bead.model_validate(self.rows[bead_id])

    def notes(self, bead_id: str) -> list[str]:
        return str(self.rows[bead_id]["notes"]).splitlines()

    def comments(self, bead_id: str) -> list[str]:
        return [str(comment["text"]) for comment in self.rows[bead_id]["comments"]]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.rows)

    def methods(self) -> list[str]:
        return [call.method for call in self.log]

    # -- faults and hooks ------------------------------------------------------------------

    def fail(
        self,
        method: Method | None = None,
        *,
        nth: int | None = None,
        bead: str | None = None,
        land: bool = False,
        error: type[BdError] = BdError,
        message: str | None = None,
    ) -> None:
        """Matching calls raise `error`; with `land` the write is done first (bd died after it)."""

        def fault(call: Call) -> None:
            raise error(message or f"bd {SUBCOMMAND[call.method]} exited 1: injected failure")

        self._rules.append(_Rule(method, nth, bead, land, fault))

    def after(
        self,
        method: Method | None,
        action: Callable[[], object],
        *,
        nth: int | None = None,
        bead: str | None = None,
    ) -> None:
        """Run `action` once a matching call has done its work: the world moving in between."""
        self._rules.append(_Rule(method, nth, bead, True, lambda call: action()))

    # -- the BeadStore protocol --------------------------------------------------------------

    @property
    def calls(self) -> int:
        return len(self.log)

    def queue(self, assignee: str, status: Status) -> QueryResult:
        def read() -> QueryResult:
            # `bd query` counts a bead's comments but does not list them; `bd show` does.
            rows = [
                {k: v for k, v in row.items() if k != "comments"}
                for row in self.rows.values()
                if row.get("assignee") == assignee and row.get("status") == status
            ]
            return _beads_from(
                copy.deepcopy(rows), f"bd query {queue_expression(assignee, status)}"
            )

        return self._call("queue", None, {"assignee": assignee, "status": status}, read)

    def ready(self, assignee: str) -> QueryResult:
        def read() -> QueryResult:
            # bd prints ready rows without metadata, notes or comments.
            hidden = {"metadata", "notes", "comments"}
            rows = [
                {k: v for k, v in row.items() if k not in hidden}
                for bead_id, row in self.rows.items()
                if row.get("assignee") == assignee and self._offered(bead_id)
            ]
            return _beads_from(copy.deepcopy(rows), f"bd ready --assignee {assignee}")

        return self._call("ready", None, {"assignee": assignee}, read)

    def show(self, bead_id: str) -> Bead:
        def read() -> Bead:
            # bd 1.0.2's words for *any* failed lookup, which BdClient reads as a refusal.
            row = self._row(bead_id, "show", "no issues found matching the provided IDs")
            result = _beads_from([copy.deepcopy(row)], f"bd show {bead_id}")
            if not result.beads:
                raise BdError(f"bd show {bead_id}: {result.unreadable[bead_id]}")
            return result.beads[0]

        return self._call("show", bead_id, {}, read)

    def update(
        self,
        bead_id: str,
        *,
        claim: bool = False,
        status: Status | None = None,
        note: str | None = None,
        set_metadata: Mapping[str, str] | None = None,
        unset_metadata: Sequence[str] = (),
        actor: str | None = None,
    ) -> None:
        change = Change(claim, status, note, set_metadata or {}, tuple(unset_metadata), actor)
        self._call("update", bead_id, _given(change), lambda: self._write(bead_id, change))

    def update_many(self, bead_ids: Sequence[str], change: Change) -> set[str]:
        def write() -> set[str]:
            # bd 1.0.2: each bead in turn; a refused one is said on stderr and skipped, an
            # unreadable metadata field ends the command midway; exit 1 when none was updated.
            updated: set[str] = set()
            refusals: list[str] = []
            for bead_id in bead_ids:
                try:
                    self._faulted_write(bead_id, change)
                except (BdRejected, BdTooLarge) as exc:
                    refusals.append(str(exc))
                    continue
                updated.add(bead_id)
            if not updated:
                raise BdRejected(refusals[0] if refusals else "bd update: nothing updated")
            return updated

        return self._call("update_many", None, _given(change) | {"beads": list(bead_ids)}, write)

    def _faulted_write(self, bead_id: str, change: Change) -> None:
        """One bead of an `update_many`, with the faults and hooks set for that bead's own
        `update` (`fail(bead=...)`, `after("update", bead=...)`): bd says why on stderr and
        goes on with the next, so a fault here is a refusal of this bead alone."""
        rules = [
            rule
            for rule in self._rules
            if rule.bead == bead_id and rule.method in (None, "update") and rule.nth is None
        ]
        call = Call("update", bead_id, _given(change))

        def apply(after_work: bool) -> None:
            try:
                for rule in rules:
                    if rule.after_work == after_work:
                        rule.effect(call)
            except BdError as exc:
                raise BdRejected(f"Error updating {bead_id}: {exc}") from None

        apply(after_work=False)
        self._write(bead_id, change)  # an unreadable metadata field still ends the command
        apply(after_work=True)

    def _write(self, bead_id: str, change: Change) -> None:
        row, now = self._row(bead_id, "update"), iso_utc(self.clock())
        if change.claim:
            # A transaction of its own, a CAS on the assignee alone: a bead already
            # assigned to the actor "succeeds" and is left as it was.
            holder, who = row.get("assignee") or "", change.actor or self.actor
            if holder not in ("", who):
                raise BdRejected(f"bd update {bead_id}: issue already claimed by {holder}")
            if not holder:
                self._fits(row)
                row.update(assignee=who, status=Status.IN_PROGRESS.value, updated_at=now)
        changes: dict[str, Any] = {} if change.status is None else {"status": change.status.value}
        if change.note is not None:
            notes = row.get("notes")
            changes["notes"] = f"{notes}\n{change.note}" if notes else change.note
        if change.set_metadata or change.unset_metadata:
            changes["metadata"] = _edit_metadata(row, change.set_metadata, change.unset_metadata)
        if changes:
            self._fits(row)
            row.update(changes, updated_at=now)

    def comment(self, bead_id: str, text: str) -> None:
        def write() -> None:
            # A row of its own: the bead's notes and updated_at stay as they were.
            comments = self._row(bead_id, "comments add").setdefault("comments", [])
            stamp = iso_utc(self.clock())
            number = f"c-{self._counts['comment']}"
            comments.append({"id": number, "author": self.actor, "text": text, "created_at": stamp})

        self._call("comment", bead_id, {"text": text}, write)

    # -- bd ready's rules (docs/bd-contract.md, "Ready") --------------------------------------

    def _offered(self, bead_id: str) -> bool:
        row = self.rows[bead_id]
        held_back = self._blocked() | self._children_of(self._deferred())
        return (
            row.get("status") == Status.OPEN.value
            and not row.get("pinned")
            and not row.get("ephemeral")
            and row.get("issue_type") not in NOT_WORK_TYPES
            and bead_id not in self._deferred()
            and bead_id not in held_back
        )

    def _active(self, bead_id: str) -> bool:
        return bead_id in self.rows and self.rows[bead_id].get("status") not in ("closed", "pinned")

    def _children_of(self, parents: set[str]) -> set[str]:
        return {d.issue for d in self.dependencies if d.kind == "parent-child" and d.on in parents}

    def _deferred(self) -> set[str]:
        now = self.clock()
        return {
            bead_id
            for bead_id, row in self.rows.items()
            if row.get("defer_until") and datetime.fromisoformat(row["defer_until"]) > now
        }

    def _blocked(self) -> set[str]:
        """bd's blocked set: blocks / conditional-blocks on an active bead; waits-for on a
        spawner while its children are unfinished; then the direct children of all of those."""
        blocked = {dep.issue for dep in self.dependencies if self._holds_back(dep)}
        return blocked | self._children_of(blocked)

    def _holds_back(self, dep: Dependency) -> bool:
        if not self._active(dep.issue):
            return False
        if dep.kind in ("blocks", "conditional-blocks"):
            return self._active(dep.on)
        return dep.kind == "waits-for" and self._waiting(dep)

    def _waiting(self, dep: Dependency) -> bool:
        children = self._children_of({dep.on})
        active = any(self._active(child) for child in children)
        if dep.gate == "any-children":
            closed = any(self.rows.get(c, {}).get("status") == "closed" for c in children)
            return active and not closed
        return active

    # -- plumbing ------------------------------------------------------------------------------

    def _fits(self, row: dict[str, Any]) -> None:
        """bd records the old row in events.old_value before each write: past the limit, the
        whole update is refused (a claim and its second write are two such updates)."""
        size = stored_size(row)
        if self.row_limit is not None and size > self.row_limit:
            raise BdTooLarge(
                f"bd update {row['id']}: failed to record event: value of {size} bytes is too "
                "large for column 'old_value'"
            )

    def _row(self, bead_id: str, command: str, missing: str = "") -> dict[str, Any]:
        if bead_id not in self.rows:
            raise BdRejected(f"bd {command} {bead_id}: {missing or 'no issue found matching'}")
        return self.rows[bead_id]

    def _call(
        self, method: Method, bead: str | None, args: dict[str, Any], work: Callable[[], Result]
    ) -> Result:
        call = Call(method, bead, args)
        self.log.append(call)
        self._counts[method] += 1
        rules = [rule for rule in self._rules if rule.matches(call, self._counts)]
        for rule in rules:
            if not rule.after_work:
                rule.effect(call)
        result = work()
        for rule in rules:
            if rule.after_work:
                rule.effect(call)
        return result


def _given(change: Change) -> dict[str, Any]:
    """Only the arguments the job set, as the call log shows them."""
    given = {k: v for k, v in change.as_update().items() if v}
    if "unset_metadata" in given:
        given["unset_metadata"] = list(given["unset_metadata"])
    return given


def _edit_metadata(
    row: dict[str, Any], set_values: Mapping[str, str], unset: Sequence[str]
) -> dict[str, Any]:
    if not isinstance(row.get("metadata"), dict):
        # bd reads the stored JSON into a map first; an array, a string... cannot be edited.
        raise BdError(f"bd update exited 1: metadata edit failed for {row['id']}: not an object")
    edited = dict(row["metadata"])
    for key, value in set_values.items():
        edited[key] = json.loads(value) if _JSON_LITERAL.fullmatch(value) else value
    for key in unset:
        edited.pop(key, None)
    return edited
