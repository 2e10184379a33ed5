"""The bead store the jobs depend on, and the only place that runs `bd` (bd 1.0.2's CLI).

The dispatcher and the reaper see beads only through `BeadStore`; `BdClient` is the one
implementation the product ships. Unit tests drive the jobs with an in-memory store; the
real-bd suite holds the CLI to what `BdClient` assumes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from jobs.log import excerpt
from jobs.protocol import Status, queue_expression
from jobs.rowsize import stored_size

_ADVISORY = re.compile(r"^(warning|fix:|or:|to |remove |the port file)", re.IGNORECASE)
# bd prints at most this much of an error worth quoting in a log line.
_ERROR_EXCERPT = 300


def _aware(value: datetime) -> datetime:
    # bd writes UTC; a naive stamp would make age arithmetic silently wrong.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A stamp bd printed, in UTC whether or not bd wrote the zone.
BdTime = Annotated[datetime, AfterValidator(_aware)]


class Comment(BaseModel):
    """One entry of `bd comments` (bd show --json lists them); dated by the bd that wrote it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str = ""
    author: str = ""
    created_at: BdTime


class Bead(BaseModel):
    """One issue as `bd --json` prints it; fields we do not use are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    title: str = ""
    status: str
    priority: int
    assignee: str = ""
    acceptance_criteria: str = ""
    notes: str = ""
    created_at: BdTime
    updated_at: BdTime
    # `bd create --defer` keeps the status `open`: only this stamp keeps it out of `bd ready`.
    defer_until: BdTime | None = None
    issue_type: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Only `bd show` prints them; `bd comments add` leaves updated_at alone.
    comments: list[Comment] = Field(default_factory=list)
    # The row as bd printed it, kept for its size as bd stores it: measured only when
    # asked (a poll reads every queued bead and claims a few).
    _row: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_row(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Bead:
        bead: Bead = handler(data)
        if isinstance(data, dict):
            bead._row = data
        return bead

    @property
    def stored_bytes(self) -> int:
        """The row's size as bd stores it (jobs/rowsize.py), from the fields bd printed: a
        `bd ready` row has no notes or metadata, so only a query or show row tells it all."""
        return stored_size(self._row)

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_object(cls, value: Any) -> Any:
        # bd omits empty metadata and some versions print null; both mean "none".
        return {} if value is None else value

    @field_validator("comments", mode="before")
    @classmethod
    def _comment_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def has_acceptance_criteria(self) -> bool:
        return bool(self.acceptance_criteria.strip())

    def deferred_at(self, now: datetime) -> bool:
        """Still hidden from `bd ready` by a `defer_until` in the future."""
        return self.defer_until is not None and self.defer_until > now

    @property
    def last_activity(self) -> datetime:
        """The latest sign of life: any field change, note, or comment."""
        return max([self.updated_at, *(comment.created_at for comment in self.comments)])


@dataclass(frozen=True)
class QueryResult:
    """The beads bd printed, and the ids of those it printed in a shape we cannot use.

    One bad row (say, metadata that is not an object) must not hide the rest of the queue.
    """

    beads: list[Bead]
    unreadable: dict[str, str]


class BdError(Exception):
    """bd could not do what was asked (crash, timeout, unreadable output, bad database)."""


class BdRejected(BdError):
    """bd answered but refused: the bead is gone or is held by someone else."""


class BdTooLarge(BdError):
    """bd refused to update a bead whose stored row passed its limit (jobs/rowsize.py):
    no update will ever succeed on it; `bd close` and comments still do."""


@dataclass(frozen=True)
class Change:
    """What one `bd update` writes to each bead it names: its flags."""

    claim: bool = False
    status: Status | None = None
    note: str | None = None
    set_metadata: Mapping[str, str] = field(default_factory=dict)
    unset_metadata: tuple[str, ...] = ()
    actor: str | None = None

    def flags(self) -> list[str]:
        flags = ["--claim"] if self.claim else []
        if self.status is not None:
            flags += ["--status", self.status]
        if self.note is not None:
            flags += ["--append-notes", self.note]
        for key, value in sorted(self.set_metadata.items()):
            flags += ["--set-metadata", f"{key}={value}"]
        for key in self.unset_metadata:
            flags += ["--unset-metadata", key]
        return flags

    def as_update(self) -> dict[str, Any]:
        """As `BeadStore.update`'s keyword arguments."""
        return {
            "claim": self.claim,
            "status": self.status,
            "note": self.note,
            "set_metadata": self.set_metadata,
            "unset_metadata": self.unset_metadata,
            "actor": self.actor,
        }


class BeadStore(Protocol):
    """What the jobs need of a beads database: two reads and two kinds of write."""

    @property
    def calls(self) -> int:
        """How many store calls this run made (for bd: processes started)."""
        ...

    def queue(self, assignee: str, status: Status) -> QueryResult:
        """Every bead of `assignee` in `status`, without a cap."""
        ...

    def ready(self, assignee: str) -> QueryResult:
        """What `bd ready` offers `assignee`: open, unblocked, not deferred, without a cap.

        bd prints these rows without `metadata` and `notes`: a filter, not a full read.
        """
        ...

    def show(self, bead_id: str) -> Bead:
        """The bead as it is now, comments included; BdError when it cannot be read."""
        ...

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
        """One write: status, an appended note and metadata changes land together.

        `claim` takes an unassigned bead for `actor`; BdRejected when the bead is gone or
        someone else holds it.
        """
        ...

    def update_many(self, bead_ids: Sequence[str], change: Change) -> set[str]:
        """The same write to several beads in one call (one bd process); the ids it updated.

        bd goes on past a bead it refuses; a bead missing from the answer may or may not have
        been written. BdRejected when it updated none, BdError when it failed midway.
        """
        ...

    def comment(self, bead_id: str, text: str) -> None:
        """A comment row of its own: it can never overwrite anyone's note."""
        ...


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class BdClient:
    """Runs bd against one database as one actor, with a hard timeout per call."""

    def __init__(
        self,
        bd_bin: str,
        beads_dir: Path,
        actor: str,
        timeout_seconds: float,
        runner: Runner = subprocess.run,
    ) -> None:
        self.bd_bin = bd_bin
        self.beads_dir = beads_dir
        self.actor = actor
        self.timeout_seconds = timeout_seconds
        self._run = runner
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    # -- reads ---------------------------------------------------------------

    def queue(self, assignee: str, status: Status) -> QueryResult:
        """`--limit 0`, because bd's default cap of 50 starves the rest."""
        expression = queue_expression(assignee, status)
        payload = self._json(["query", expression, "--limit", "0"])
        return _beads_from(payload, f"bd query {expression!r}")

    def ready(self, assignee: str) -> QueryResult:
        """`bd ready`: bd's own rule for "can start now" (docs/bd-contract.md, "Ready").

        `--limit 0`, because bd's default cap of 10 would hide the rest; the order is ours
        (jobs/dispatch.py), so bd's sort policy does not matter.
        """
        args = ["ready", "--assignee", assignee, "--limit", "0", "--sort", "priority"]
        payload = self._json(args)
        return _beads_from(payload, f"bd ready --assignee {assignee}")

    def blocked(self) -> dict[str, list[str]]:
        """`bd blocked`: every bead bd holds back by a dependency (or a blocked parent), with
        the ids bd names as its blockers. Whole database; for `explain`, not for polls."""
        payload = self._json(["blocked"])
        if not isinstance(payload, list):
            raise BdError(f"bd blocked printed {type(payload).__name__}, expected a JSON array")
        return {
            str(row["id"]): [str(blocker) for blocker in row.get("blocked_by") or []]
            for row in payload
            if isinstance(row, dict) and row.get("id")
        }

    def show_raw(self, bead_id: str) -> dict[str, Any]:
        """`bd show` as printed: with its dependencies, dependents and parent (for `explain`)."""
        payload = self._json(["show", bead_id])
        for row in payload if isinstance(payload, list) else []:
            if isinstance(row, dict) and row.get("id") == bead_id:
                return row
        raise BdError(f"bd show {bead_id}: not in its output")

    def show(self, bead_id: str) -> Bead:
        """The bead as it is now, comments included.

        bd 1.0.2 says "no issues found" for *any* failed lookup (a dropped Dolt connection
        too), so a failure here never proves the bead is gone: it raises, callers skip.
        """
        result = _beads_from(self._json(["show", bead_id]), f"bd show {bead_id}")
        for bead in result.beads:
            if bead.id == bead_id:
                return bead
        reason = result.unreadable.get(bead_id, "not in its output")
        raise BdError(f"bd show {bead_id}: {reason}")

    # -- writes --------------------------------------------------------------

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
        """One `bd update` call, so a status change and its note land together.

        Raises BdRejected when bd updated nothing (bead missing, or held by another actor).
        """
        change = Change(claim, status, note, set_metadata or {}, tuple(unset_metadata), actor)
        self._json(["update", bead_id, *change.flags()], actor=actor)

    def update_many(self, bead_ids: Sequence[str], change: Change) -> set[str]:
        """`bd update ID ID ...`: bd writes each in turn, says on stderr why it skipped one,
        prints the ones it updated, and exits 1 only when it updated none."""
        payload = self._json(["update", *bead_ids, *change.flags()], actor=change.actor)
        if not isinstance(payload, list):
            raise BdError(f"bd update printed {type(payload).__name__}, expected a JSON array")
        return {str(row["id"]) for row in payload if isinstance(row, dict) and row.get("id")}

    def comment(self, bead_id: str, text: str) -> None:
        """`bd comments add`: a row of its own, so it can never overwrite anyone's note.

        (`--append-notes` rewrites the whole notes field from a read taken before its write.)
        """
        self._json(["comments", "add", bead_id, "--", text])

    # -- plumbing ------------------------------------------------------------

    def _json(self, args: list[str], actor: str | None = None) -> Any:
        command = [
            self.bd_bin,
            "--db",
            str(self.beads_dir),
            "--actor",
            actor or self.actor,
            "--json",
            *args,
        ]
        self._calls += 1
        try:
            completed = self._run(
                command,
                capture_output=True,
                text=True,
                # A stray non-UTF-8 byte must become a BdError below, not a crash here.
                encoding="utf-8",
                errors="replace",
                timeout=self.timeout_seconds,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BdError(f"bd {args[0]} timed out after {self.timeout_seconds:g}s") from None
        except OSError as exc:
            raise BdError(f"cannot run bd ({self.bd_bin}): {exc.strerror or exc}") from None
        if completed.returncode != 0:
            message = _error_message(completed.stdout, completed.stderr)
            if _TOO_LARGE.search(message):
                raise BdTooLarge(f"bd {args[0]} {args[1] if len(args) > 1 else ''}: {message}")
            if _is_rejection(message):
                raise BdRejected(f"bd {args[0]} {args[1] if len(args) > 1 else ''}: {message}")
            raise BdError(f"bd {args[0]} exited {completed.returncode}: {message}")
        try:
            return json.loads(completed.stdout) if completed.stdout.strip() else []
        except json.JSONDecodeError:
            raise BdError(
                f"bd {args[0]} printed invalid JSON: {excerpt(completed.stdout, _ERROR_EXCERPT)!r}"
            ) from None


def resolve_bd_bin(bd_bin: str) -> str | None:
    """The path bd would be run from, or None when it cannot be found."""
    return shutil.which(bd_bin)


def _beads_from(payload: Any, what: str) -> QueryResult:
    if not isinstance(payload, list):
        raise BdError(f"{what} printed {type(payload).__name__}, expected a JSON array")
    beads: list[Bead] = []
    unreadable: dict[str, str] = {}
    for index, item in enumerate(payload):
        try:
            beads.append(Bead.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "bead"
            bead_id = item.get("id") if isinstance(item, dict) else None
            key = bead_id if isinstance(bead_id, str) and bead_id else f"#{index}"
            unreadable[key] = excerpt(f"{where}: {first['msg']}", _ERROR_EXCERPT)
    return QueryResult(beads, unreadable)


def _error_message(stdout: str, stderr: str) -> str:
    """The error bd reported, with the cause it gave only as a warning (an unreadable
    metadata.json surfaces as "database name must not be empty" without it)."""
    error = _error(stdout, stderr)
    causes = [line.strip() for line in stderr.splitlines() if _CONFIG_CAUSE.search(line)]
    return excerpt(f"{error} ({causes[0]})", _ERROR_EXCERPT) if causes else error


def _error(stdout: str, stderr: str) -> str:
    """bd --json reports errors as {"error": ...} on stdout; plain text goes to stderr."""
    for text in (stdout, stderr):
        start = text.find("{")
        if start >= 0:
            try:
                payload = json.loads(text[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(payload, dict) and payload.get("error"):
                return excerpt(str(payload["error"]), _ERROR_EXCERPT)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # bd adds advisory lines (deprecations, the beads.role hint) around the real error.
    useful = [line for line in lines if not _ADVISORY.match(line)]
    # Prefer the error itself over hint lines bd prints after it.
    errors = [line for line in useful if line.lower().startswith("error")]
    return excerpt(
        (errors or useful or lines or ["(no message)"])[0 if errors else -1], _ERROR_EXCERPT
    )


# bd 1.0.2's warnings when it cannot read its metadata.json (it then goes on without it).
_CONFIG_CAUSE = re.compile(
    r"failed to load beads config|no beads configuration found", re.IGNORECASE
)
# The events table refusing the old row (jobs/rowsize.py).
_TOO_LARGE = re.compile(r"too (large|long) for column", re.IGNORECASE)
# bd 1.0.2's words for "that bead is gone" and "someone else holds it".
_REJECTION = re.compile(r"already claimed|not found|no issues? found", re.IGNORECASE)


def _is_rejection(message: str) -> bool:
    return _REJECTION.search(message) is not None
