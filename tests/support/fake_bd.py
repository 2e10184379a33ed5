#!/usr/bin/env python3
"""A fake of the bd 1.0.2 CLI for tests: same flags, JSON shapes, error texts and exit codes.

Only the subset the dispatcher and reaper use is implemented (init, create, query, show,
update, note, comments [add], assign, close, version). Behaviour was read from the bd v1.0.2
Go source and checked against a real bd 1.0.2 binary; where the fake knowingly differs, a
comment says so.

State: one JSON file, ``DIR/fake-bd.json``, where DIR comes from ``--db DIR`` (or the
``BEADS_DIR`` / ``BEADS_DB`` environment variables, in that order, as real bd does). Every
invocation holds an exclusive ``fcntl`` lock on ``DIR/fake-bd.lock`` while it reads and
writes, and writes go through a temp file + ``os.replace``, so concurrent processes are safe.
That also makes the fake *more* serialised than a Dolt sql-server: real server-mode races
can fail with transaction conflicts the fake never produces.

Test-only knobs (environment):

- ``FAKE_BD_FAIL``: comma list of subcommands (or ``*``) that exit 1 with an error.
- ``FAKE_BD_HANG_SECONDS``: sleep this long before acting (after logging the call), for
  every subcommand or only those listed in ``FAKE_BD_HANG_ON`` (comma list).
- ``FAKE_BD_GARBAGE``: ``1``/``*`` or a comma list of subcommands; the command still acts,
  then prints truncated JSON (exit 0), like a bd killed mid-write.
- ``FAKE_BD_CALL_LOG``: append one JSON line per invocation: argv, subcommand, pid, time.
- ``FAKE_BD_NOW``: RFC 3339 time the fake uses as "now" (deterministic timestamps).
- ``FAKE_BD_ROLE_WARNING=1``: print the `beads.role not configured` warning real bd puts
  on stderr for creates and unknown ids when git has no `beads.role`.

Importable too: ``FakeBd(db_dir)`` gives tests a direct API to seed and inspect state.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

VERSION = "1.0.2"
STATE_FILE = "fake-bd.json"
LOCK_FILE = "fake-bd.lock"
EXECUTABLE = Path(__file__).resolve()
DEFAULT_PREFIX = "bd"
DEFAULT_QUERY_LIMIT = 50  # bd query's --limit default; 0 means unlimited.
SCHEMA = 1

STATUSES = ("open", "in_progress", "blocked", "deferred", "closed", "pinned", "hooked")
ISSUE_TYPES = (
    "bug",
    "feature",
    "task",
    "epic",
    "chore",
    "decision",
    "message",
    "molecule",
    "spike",
    "story",
    "milestone",
)
TYPE_ALIASES = {
    "enhancement": "feature",
    "feat": "feature",
    "dec": "decision",
    "adr": "decision",
    "investigation": "spike",
    "timebox": "spike",
    "user-story": "story",
    "user_story": "story",
    "ms": "milestone",
}
_METADATA_KEY_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")
_JSON_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"

# Issue fields in the order bd's Go struct declares them, with whether `omitempty` applies.
# Only the fields the fake models are listed; unknown extras go in an issue's "extra" dict.
_ISSUE_FIELDS: tuple[tuple[str, bool], ...] = (
    ("id", False),
    ("title", False),
    ("description", True),
    ("design", True),
    ("acceptance_criteria", True),
    ("notes", True),
    ("status", True),
    ("priority", False),  # no omitempty: P0 is valid
    ("issue_type", True),
    ("assignee", True),
    ("owner", True),
    ("created_at", False),
    ("created_by", True),
    ("updated_at", False),
    ("started_at", True),
    ("closed_at", True),
    ("close_reason", True),
    ("closed_by_session", True),
    ("metadata", True),  # bd stores {} for "none" and omits it when printing
)
_COUNT_FIELDS = ("dependency_count", "dependent_count", "comment_count")


def _blank_issue() -> dict[str, Any]:
    """Every stored field with bd's zero value, so rendering never meets a missing key."""
    return {
        "id": "",
        "title": "",
        "description": "",
        "design": "",
        "acceptance_criteria": "",
        "notes": "",
        "status": "open",
        "priority": 2,
        "issue_type": "task",
        "assignee": "",
        "owner": "",
        "created_at": _GO_ZERO_TIME,
        "created_by": "",
        "updated_at": _GO_ZERO_TIME,
        "started_at": None,
        "closed_at": None,
        "close_reason": "",
        "closed_by_session": "",
        "metadata": {},
        "labels": [],
        "dependency_count": 0,
        "dependent_count": 0,
        "comment_count": 0,  # comments bd has that the fake does not model (seeded counts)
        "comments": [],  # rows of bd's comments table, oldest first, as stored
        "extra": {},
    }


# --------------------------------------------------------------------------- time


def _parse_time(value: str | datetime) -> datetime:
    """An aware UTC datetime from a datetime or an RFC 3339 / SQL DATETIME string."""
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    if parsed.tzinfo is None:
        # bd reads DATETIME columns as UTC; a naive test value means the same.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _db_time(value: str | datetime) -> str:
    """The stamp as bd prints it after a database round trip: UTC, whole seconds.

    Dolt's DATETIME has no fraction and rounds (observed: .84 s became the next second).
    """
    moment = _parse_time(value)
    rounded = (moment + timedelta(microseconds=500_000)).replace(microsecond=0)
    return rounded.strftime("%Y-%m-%dT%H:%M:%SZ")


def _nano_time(moment: datetime) -> str:
    """Go's RFC3339Nano for an in-memory time (bd create prints these before any re-read)."""
    base = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _now() -> datetime:
    pinned = os.environ.get("FAKE_BD_NOW", "").strip()
    return _parse_time(pinned) if pinned else datetime.now(UTC)


# --------------------------------------------------------------------------- ids


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# How many hash bytes bd feeds the base36 encoder for each id length.
_HASH_BYTES = {3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 5}


def _base36(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rem = divmod(number, 36)
        digits = _BASE36[rem] + digits
    return digits.rjust(length, "0")[-length:]


def _adaptive_length(existing: int) -> int:
    """Shortest id length (3..8) whose birthday-collision chance stays under 25 %, like bd."""
    for length in range(3, 9):
        probability = 1.0 - math.exp(-(existing * existing) / (2.0 * 36.0**length))
        if probability <= 0.25:
            return length
    return 8


def _generate_id(
    issues: Mapping[str, Any],
    prefix: str,
    title: str,
    description: str,
    creator: str,
    created: datetime,
) -> str:
    top_level = sum(
        1 for key in issues if key.startswith(prefix + "-") and "." not in key[len(prefix) + 1 :]
    )
    nanos = int(created.timestamp()) * 1_000_000_000 + created.microsecond * 1000
    for length in range(_adaptive_length(top_level), 9):
        for nonce in range(10):
            content = f"{title}|{description}|{creator}|{nanos}|{nonce}".encode()
            digest = hashlib.sha256(content).digest()
            candidate = f"{prefix}-{_base36(digest[: _HASH_BYTES[length]], length)}"
            if candidate not in issues:
                return candidate
    raise RuntimeError("failed to generate unique ID")


def _uuid7(moment: datetime) -> str:
    """A UUID v7 (48-bit Unix milliseconds, then random bits), as bd gives each comment."""
    millis = int(moment.timestamp() * 1000) & ((1 << 48) - 1)
    rand_a = int.from_bytes(os.urandom(2), "big") & 0x0FFF
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def _new_comment(issue_id: str, author: str, text: str, moment: datetime) -> dict[str, Any]:
    """A row of bd's comments table; created_at is a DATETIME (whole seconds)."""
    return {
        "id": _uuid7(moment),
        "issue_id": issue_id,
        "author": author,
        "text": text,
        "created_at": _db_time(moment),
    }


def _go_quote(text: str) -> str:
    """Close enough to Go's %q for the ids and words that appear in bd's messages."""
    return json.dumps(text, ensure_ascii=False)


def _looks_prefixed(value: str) -> bool:
    hyphen = value.find("-")
    if hyphen <= 0 or hyphen > 8:
        return False
    prefix, suffix = value[:hyphen], value[hyphen + 1 :]
    if not re.fullmatch(r"[a-z0-9]+", prefix) or not suffix:
        return False
    return bool(re.match(r"[a-z0-9]", suffix))


class IdNotFound(LookupError):
    """bd's ResolvePartialID failed; str() is bd's message."""


def _resolve_id(issues: Mapping[str, Any], prefix: str, raw: str) -> str:
    """Exact id, then prefix-completed id, then a unique substring of the hash part."""
    if raw in issues:
        return raw
    with_hyphen = prefix if prefix.endswith("-") else prefix + "-"
    normalized = raw if raw.startswith(with_hyphen) or _looks_prefixed(raw) else with_hyphen + raw
    if normalized in issues:
        return normalized
    hash_part = normalized.removeprefix(with_hyphen)
    exact = ""
    matches: list[str] = []
    for issue_id in issues:
        issue_hash = issue_id.removeprefix(with_hyphen)
        if issue_hash == hash_part:
            exact = issue_id
        if hash_part in issue_hash:
            matches.append(issue_id)
    if exact:
        return exact
    if not matches:
        raise IdNotFound(f"no issue found matching {_go_quote(raw)}")
    if len(matches) > 1:
        raise IdNotFound(
            f"ambiguous ID {_go_quote(raw)} matches {len(matches)} issues: "
            f"[{' '.join(matches)}]\nUse more characters to disambiguate"
        )
    return matches[0]


# --------------------------------------------------------------------------- rendering


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def render_issue(issue: Mapping[str, Any], *, labels: bool = True) -> dict[str, Any]:
    """An issue as bd's encoding/json prints types.Issue (omitempty rules applied)."""
    out: dict[str, Any] = {}
    for key, omit_empty in _ISSUE_FIELDS:
        value = issue.get(key)
        # bd omits metadata that is absent or `{}`; any other JSON (`[]` too) is printed.
        empty = value in (None, {}) if key == "metadata" else _empty(value)
        if omit_empty and empty:
            continue
        if key == "metadata" and isinstance(value, dict):
            value = dict(sorted(value.items()))  # Go marshals map keys sorted
        out[key] = value
    if labels and issue.get("labels"):
        out["labels"] = sorted(issue["labels"])
    out.update(issue.get("extra") or {})
    return out


def render_query_row(issue: Mapping[str, Any]) -> dict[str, Any]:
    """bd query --json rows are types.IssueWithCounts: the issue plus three counts."""
    out = render_issue(issue)
    for key in _COUNT_FIELDS:
        out[key] = int(issue.get(key) or 0)
    out["comment_count"] += len(issue.get("comments") or [])
    return out


def render_comment(comment: Mapping[str, Any]) -> dict[str, Any]:
    """types.Comment: id (a UUID v7 string since bd 1.0), issue_id, author, text, created_at."""
    return {key: comment[key] for key in ("id", "issue_id", "author", "text", "created_at")}


def _comments_in_order(issue: Mapping[str, Any]) -> list[dict[str, Any]]:
    # bd: ORDER BY created_at ASC, id ASC; ids are time-ordered, so ties keep insertion order.
    stored = list(issue.get("comments") or [])
    return sorted(stored, key=lambda comment: _parse_time(comment["created_at"]))


def render_show(issue: Mapping[str, Any]) -> dict[str, Any]:
    """bd show --json elements are types.IssueDetails; labels, then comments, follow the issue.

    The fake models no dependencies, so `dependencies`, `dependents` and `parent` (all
    omitempty) never appear; `comments` (omitempty) appears once the issue has one.
    """
    out = render_issue(issue)
    comments = _comments_in_order(issue)
    if comments:
        out["comments"] = [render_comment(comment) for comment in comments]
    return out


def _go_json(value: Any) -> str:
    """json.dumps the way Go's encoder prints it: 2-space indent, HTML characters escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# --------------------------------------------------------------------------- state


@dataclass
class State:
    prefix: str = DEFAULT_PREFIX
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_touched: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "prefix": self.prefix,
            "last_touched": self.last_touched,
            "issues": self.issues,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        issues: dict[str, dict[str, Any]] = {}
        for issue_id, stored in (data.get("issues") or {}).items():
            # Fill fields a hand-edited or older state file may lack.
            issue = _blank_issue()
            issue.update(stored)
            issues[issue_id] = issue
        return cls(
            prefix=str(data.get("prefix") or DEFAULT_PREFIX),
            issues=issues,
            last_touched=str(data.get("last_touched") or ""),
        )


class NotInitialized(Exception):
    """The state directory has no fake-bd.json (bd init never ran there)."""


class Store:
    """The state file plus its lock. One transaction = one locked read-modify-write."""

    def __init__(self, db_dir: Path) -> None:
        self.db_dir = db_dir
        self.state_path = db_dir / STATE_FILE
        self.lock_path = db_dir / LOCK_FILE

    def exists(self) -> bool:
        return self.state_path.is_file()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Exclusive even for reads: simpler, and reads are cheap at test sizes.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True, create: bool = False) -> Iterator[State]:
        if create:
            self.db_dir.mkdir(parents=True, exist_ok=True)
        elif not self.db_dir.is_dir():
            raise NotInitialized(str(self.db_dir))
        with self._lock():
            if self.state_path.is_file():
                state = State.from_json(json.loads(self.state_path.read_text(encoding="utf-8")))
            elif create:
                state = State()
            else:
                raise NotInitialized(str(self.db_dir))
            yield state
            if write:
                self._save(state)

    def _save(self, state: State) -> None:
        # Temp file in the same directory, then an atomic rename: readers never see half a
        # file. No fsync: crash-safety does not matter for a test fake, speed does.
        fd, temp_name = tempfile.mkstemp(dir=self.db_dir, prefix=".fake-bd.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would lock out a second test user
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state.to_json(), handle, indent=1)
            os.replace(temp_name, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise


def _write_metadata_json(db_dir: Path, prefix: str) -> None:
    """What real `bd init` leaves in the beads dir, so config-copying code has a file to copy."""
    path = db_dir / "metadata.json"
    if path.exists():
        return
    payload = {
        "database": "dolt",
        "backend": "dolt",
        "dolt_mode": "embedded",
        "dolt_database": prefix,
        "project_id": str(uuid.uuid4()),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- query language


class QueryError(Exception):
    """A parse or evaluation error; str() is bd's text (without the 'parsing query:' part)."""


@dataclass(frozen=True)
class Token:
    kind: str  # EOF IDENT STRING NUMBER DURATION = != < <= > >= AND OR NOT ( ) ,
    value: str
    pos: int


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    size = len(text)
    while True:
        while i < size and text[i].isspace():
            i += 1
        if i >= size:
            tokens.append(Token("EOF", "", i))
            return tokens
        start = i
        char = text[i]
        if char in "(),=":
            tokens.append(Token(char, char, start))
            i += 1
        elif char == "!":
            if i + 1 < size and text[i + 1] == "=":
                tokens.append(Token("!=", "!=", start))
                i += 2
            else:
                raise QueryError(
                    f"unexpected character '!' at position {start} (did you mean '!=' or 'NOT'?)"
                )
        elif char in "<>":
            if i + 1 < size and text[i + 1] == "=":
                tokens.append(Token(char + "=", char + "=", start))
                i += 2
            else:
                tokens.append(Token(char, char, start))
                i += 1
        elif char in "\"'":
            value, i = _read_string(text, i)
            tokens.append(Token("STRING", value, start))
        elif char.isdigit() or char in "+-":
            token, i = _read_number(text, i)
            tokens.append(token)
        elif char.isalpha() or char == "_":
            j = i
            while j < size and (text[j].isalnum() or text[j] in "_-.:"):
                j += 1
            word = text[i:j]
            upper = word.upper()
            kind = upper if upper in ("AND", "OR", "NOT") else "IDENT"
            tokens.append(Token(kind, word, start))
            i = j
        else:
            raise QueryError(f"unexpected character {_go_quote(char)} at position {start}")


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    i = start + 1
    out: list[str] = []
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
    while True:
        if i >= len(text):
            raise QueryError(f"unterminated string starting at position {start}")
        char = text[i]
        if char == quote:
            return "".join(out), i + 1
        if char == "\\":
            if i + 1 >= len(text):
                raise QueryError(f"unterminated escape sequence at position {i + 1}")
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(char)
        i += 1


def _read_number(text: str, start: int) -> tuple[Token, int]:
    i = start
    if text[i] in "+-":
        i += 1
    if i >= len(text) or not text[i].isdigit():
        raise QueryError(f"expected digit at position {i}")
    while i < len(text) and text[i].isdigit():
        i += 1
    if i < len(text) and text[i] in "hdwmyHDWMY":
        return Token("DURATION", text[start : i + 1], start), i + 1
    return Token("NUMBER", text[start:i], start), i


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str
    value: str
    kind: str  # token kind of the value: IDENT STRING NUMBER DURATION


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Cmp | And | Or | Not
_COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> None:
        self.index = min(self.index + 1, len(self.tokens) - 1)

    def parse(self) -> Node:
        if self.current.kind == "EOF":
            raise QueryError("empty query")
        node = self.parse_or()
        if self.current.kind != "EOF":
            raise QueryError(
                f"unexpected token {_go_quote(self.current.value)} at position "
                f"{self.current.pos} (expected end of query)"
            )
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.current.kind == "OR":
            self.advance()
            node = Or(node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.current.kind == "AND":
            self.advance()
            node = And(node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.current.kind == "NOT":
            self.advance()
            return Not(self.parse_not())
        return self.parse_primary()

    def parse_primary(self) -> Node:
        if self.current.kind == "(":
            self.advance()
            node = self.parse_or()
            if self.current.kind != ")":
                raise QueryError(
                    f"expected ')' at position {self.current.pos}, got {self.current.kind}"
                )
            self.advance()
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        token = self.current
        if token.kind != "IDENT":
            raise QueryError(f"expected field name at position {token.pos}, got {token.kind}")
        field_name = token.value.lower()
        self.advance()
        op = self.current
        if op.kind not in _COMPARE_OPS:
            raise QueryError(f"expected comparison operator at position {op.pos}, got {op.kind}")
        self.advance()
        value = self.current
        if value.kind not in ("IDENT", "STRING", "NUMBER", "DURATION"):
            raise QueryError(f"expected value at position {value.pos}, got {value.kind}")
        self.advance()
        return Cmp(field_name, op.kind, value.value, value.kind)


def parse_query(text: str) -> Node:
    return _Parser(text).parse()


def _time_value(cmp: Cmp, now: datetime) -> datetime:
    """bd's date values: 7d/24h/2w/3m/1y mean "that long ago"; else absolute dates.

    Natural-language values ("next monday") are not implemented by the fake.
    Absolute dates are taken as UTC; bd uses the local zone (UTC in the containers).
    """
    value = cmp.value
    if cmp.kind == "DURATION":
        value = "-" + value.lstrip("+")
    match = re.fullmatch(r"([+-]?)(\d+)([hdwmy])", value)
    if match:
        amount = int(match.group(2)) * (-1 if match.group(1) == "-" else 1)
        unit = match.group(3)
        if unit == "h":
            return now + timedelta(hours=amount)
        if unit in "dw":
            return now + timedelta(days=amount * (7 if unit == "w" else 1))
        months = amount * (12 if unit == "y" else 1)
        year, month = divmod(now.month - 1 + months, 12)
        day = min(now.day, 28)  # AddDate normalises overflow; tests never need the 29th-31st
        return now.replace(year=now.year + year, month=month + 1, day=day)
    try:
        return _parse_time(value)
    except ValueError:
        pass
    raise QueryError(
        f"cannot parse time expression: {_go_quote(value)} (examples: +6h, tomorrow, 2025-01-15)"
    )


def _like_contains(haystack: str, needle: str) -> bool:
    """SQL `LOWER(col) LIKE %needle%`: case-insensitive, `%` and `_` are wildcards."""
    pattern = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char) for char in needle.lower()
    )
    return re.search(pattern, haystack.lower(), re.DOTALL) is not None


def _is_none_word(value: str) -> bool:
    return value == "" or value.lower() in ("none", "null")


def _metadata_object(issue: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metadata's keys; JSON_EXTRACT(metadata, '$.k') finds none in a non-object."""
    metadata = issue.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _metadata_scalar_matches(issue: Mapping[str, Any], key: str, wanted: str) -> bool:
    metadata = _metadata_object(issue)
    if key not in metadata:
        return False
    value = metadata[key]
    if isinstance(value, str):
        return value == wanted
    return json.dumps(value).strip('"') == wanted


@dataclass
class IssueFilter:
    """The subset of bd's types.IssueFilter the query evaluator fills in filter mode.

    Single-valued fields keep the *last* comparison, as bd's evaluator overwrites them.
    """

    status: str | None = None
    exclude_status: list[str] = field(default_factory=list)
    issue_type: str | None = None
    exclude_types: list[str] = field(default_factory=list)
    assignee: str | None = None
    no_assignee: bool = False
    priority: int | None = None
    priority_min: int | None = None
    priority_max: int | None = None
    labels: list[str] = field(default_factory=list)
    labels_any: list[str] = field(default_factory=list)
    no_labels: bool = False
    title_contains: str = ""
    description_contains: str = ""
    empty_description: bool = False
    notes_contains: str = ""
    ids: list[str] = field(default_factory=list)
    id_prefix: str = ""
    after: dict[str, datetime] = field(default_factory=dict)  # column -> strict lower bound
    before: dict[str, datetime] = field(default_factory=dict)  # column -> strict upper bound
    metadata_fields: dict[str, str] = field(default_factory=dict)
    has_metadata_key: str = ""
    booleans: dict[str, bool] = field(default_factory=dict)
    limit: int = 0

    def matches(self, issue: Mapping[str, Any]) -> bool:
        status = issue["status"]
        if self.status is not None and status != self.status:
            return False
        if status in self.exclude_status:
            return False
        if self.issue_type is not None and issue["issue_type"] != self.issue_type:
            return False
        if issue["issue_type"] in self.exclude_types:
            return False
        # Dolt's default collation (utf8mb4_0900_bin) compares case-sensitively.
        if self.assignee is not None and issue["assignee"] != self.assignee:
            return False
        if self.no_assignee and issue["assignee"]:
            return False
        priority = issue["priority"]
        if self.priority is not None and priority != self.priority:
            return False
        if self.priority_min is not None and priority < self.priority_min:
            return False
        if self.priority_max is not None and priority > self.priority_max:
            return False
        labels = issue.get("labels") or []
        if any(label not in labels for label in self.labels):
            return False
        if self.labels_any and not any(label in labels for label in self.labels_any):
            return False
        if self.no_labels and labels:
            return False
        for column, needle in (
            ("title", self.title_contains),
            ("description", self.description_contains),
            ("notes", self.notes_contains),
        ):
            if needle and not _like_contains(issue[column], needle):
                return False
        if self.empty_description and issue["description"]:
            return False
        if self.ids and issue["id"] not in self.ids:
            return False
        if self.id_prefix and not issue["id"].startswith(self.id_prefix):
            return False
        for column, bound in self.after.items():
            stamp = issue.get(column)
            if stamp is None or not _parse_time(stamp) > bound:
                return False
        for column, bound in self.before.items():
            stamp = issue.get(column)
            if stamp is None or not _parse_time(stamp) < bound:
                return False
        for key, wanted in self.metadata_fields.items():
            if not _metadata_scalar_matches(issue, key, wanted):
                return False
        if self.has_metadata_key and self.has_metadata_key not in _metadata_object(issue):
            return False
        # The fake has no pinned/ephemeral/template issues: every flag reads false.
        return all(not wanted for wanted in self.booleans.values())


_TIME_COLUMNS = {
    "created": "created_at",
    "created_at": "created_at",
    "updated": "updated_at",
    "updated_at": "updated_at",
    "closed": "closed_at",
    "closed_at": "closed_at",
    "started": "started_at",
    "started_at": "started_at",
}
_UNSUPPORTED_FIELDS = ("spec", "spec_id", "parent", "mol_type")


class _Evaluator:
    """bd's internal/query evaluator: filter mode for AND chains, predicate mode otherwise.

    The two modes differ in real bd (case sensitivity, LIKE wildcards, validation), and the
    fake keeps those differences because callers see them.
    """

    def __init__(self, now: datetime) -> None:
        self.now = now

    # -- mode selection -------------------------------------------------------

    def filter_only(self, node: Node) -> bool:
        if isinstance(node, Cmp):
            return True
        if isinstance(node, And):
            return self.filter_only(node.left) and self.filter_only(node.right)
        if isinstance(node, Not):
            operand = node.operand
            return (
                isinstance(operand, Cmp)
                and operand.field in ("status", "type")
                and operand.op == "="
            )
        return self._or_labels(node) is not None

    def _or_labels(self, node: Node) -> list[str] | None:
        if isinstance(node, Cmp):
            if node.field in ("label", "labels") and node.op == "=":
                return [node.value]
            return None
        if isinstance(node, Or):
            left, right = self._or_labels(node.left), self._or_labels(node.right)
            if left is None or right is None:
                return None
            return left + right
        return None

    # -- filter mode ----------------------------------------------------------

    def build_filter(self, node: Node, flt: IssueFilter) -> None:
        if isinstance(node, Cmp):
            self.apply(node, flt)
        elif isinstance(node, And):
            self.build_filter(node.left, flt)
            self.build_filter(node.right, flt)
        elif isinstance(node, Not):
            self.apply_not(node, flt)
        else:
            labels = self._or_labels(node)
            if labels is None:
                raise QueryError("OR not supported for this field combination")
            flt.labels_any.extend(labels)

    def apply_not(self, node: Not, flt: IssueFilter) -> None:
        cmp = node.operand
        if not isinstance(cmp, Cmp):
            raise QueryError("NOT only supports simple comparisons in filter mode")
        if cmp.field == "status":
            if cmp.op != "=":
                raise QueryError("NOT status only supports = operator")
            flt.exclude_status.append(cmp.value.lower())
        elif cmp.field == "type":
            if cmp.op != "=":
                raise QueryError("NOT type only supports = operator")
            flt.exclude_types.append(cmp.value.lower())
        else:
            raise QueryError(f"NOT not supported for field {cmp.field} in filter mode")

    def apply(self, cmp: Cmp, flt: IssueFilter) -> None:
        name, op, value = cmp.field, cmp.op, cmp.value
        if name == "status":
            if op not in ("=", "!="):
                raise QueryError("status only supports = and != operators")
            status = value.lower()
            if status not in STATUSES:
                raise QueryError(f"invalid status: {value}")
            if op == "=":
                flt.status = status
            else:
                flt.exclude_status.append(status)
        elif name == "priority":
            self._apply_priority(cmp, flt)
        elif name == "type":
            if op not in ("=", "!="):
                raise QueryError("type only supports = and != operators")
            if op == "=":
                flt.issue_type = value.lower()
            else:
                flt.exclude_types.append(value.lower())
        elif name == "assignee":
            if op != "=":
                raise QueryError("assignee only supports = operator")
            if _is_none_word(value):
                flt.no_assignee = True
            else:
                flt.assignee = value
        elif name == "owner":
            raise QueryError("owner filtering requires predicate mode")
        elif name in ("label", "labels"):
            if op != "=":
                raise QueryError("label only supports = operator")
            if _is_none_word(value):
                flt.no_labels = True
            else:
                flt.labels.append(value)
        elif name == "title":
            if op != "=":
                raise QueryError("title only supports = operator (use title contains pattern)")
            flt.title_contains = value
        elif name in ("description", "desc"):
            if op != "=":
                raise QueryError("description only supports = operator (use desc contains pattern)")
            if _is_none_word(value):
                flt.empty_description = True
            else:
                flt.description_contains = value
        elif name == "notes":
            if op != "=":
                raise QueryError("notes only supports = operator")
            flt.notes_contains = value
        elif name in _TIME_COLUMNS:
            self._apply_time(cmp, flt)
        elif name == "id":
            if op != "=":
                raise QueryError("id only supports = operator")
            if value.endswith("*"):
                flt.id_prefix = value[:-1]
            else:
                # Several id= in one AND chain become `id IN (...)`: an OR, as in bd.
                flt.ids.append(value)
        elif name in ("pinned", "ephemeral", "template"):
            if op != "=":
                raise QueryError(f"{name} only supports = operator")
            flt.booleans[name] = self._bool(value, f"invalid boolean value for {name}: {value}")
        elif name == "has_metadata_key":
            if op != "=":
                raise QueryError("has_metadata_key only supports = operator")
            _check_metadata_key(value)
            flt.has_metadata_key = value
        elif name.startswith("metadata."):
            if op != "=":
                raise QueryError("metadata fields only support = operator")
            key = name.removeprefix("metadata.")
            _check_metadata_key(key)
            flt.metadata_fields[key] = value
        elif name in _UNSUPPORTED_FIELDS:
            raise QueryError(f"fake-bd does not implement the {name!r} query field")
        else:
            raise QueryError(f"unknown field: {name}")

    def _apply_priority(self, cmp: Cmp, flt: IssueFilter) -> None:
        try:
            priority = int(cmp.value)
        except ValueError:
            raise QueryError(f"invalid priority value: {cmp.value}") from None
        if not 0 <= priority <= 4:
            raise QueryError("priority must be between 0 and 4")
        if cmp.op == "=":
            flt.priority = priority
        elif cmp.op == "!=":
            # Real bd rejects this in filter mode (it only works inside OR/NOT queries).
            raise QueryError("priority != requires predicate filtering")
        elif cmp.op == "<":
            if priority - 1 < 0:
                raise QueryError(f"priority < {priority} matches nothing")
            flt.priority_max = priority - 1
        elif cmp.op == "<=":
            flt.priority_max = priority
        elif cmp.op == ">":
            if priority + 1 > 4:
                raise QueryError(f"priority > {priority} matches nothing")
            flt.priority_min = priority + 1
        else:
            flt.priority_min = priority

    def _apply_time(self, cmp: Cmp, flt: IssueFilter) -> None:
        column = _TIME_COLUMNS[cmp.field]
        word = column.removesuffix("_at")
        try:
            moment = _time_value(cmp, self.now)
        except QueryError as exc:
            raise QueryError(f"invalid {word} time: {exc}") from None
        day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if cmp.op == "=" and column in ("created_at", "updated_at"):
            flt.after[column] = day_start
            flt.before[column] = day_start + timedelta(days=1)
        elif cmp.op in (">", ">="):
            flt.after[column] = moment  # bd uses a strict > for both
        elif cmp.op == "<":
            flt.before[column] = moment
        elif cmp.op == "<=":
            flt.before[column] = day_start + timedelta(days=1) - timedelta(microseconds=1)
        else:
            raise QueryError(f"{word} does not support {cmp.op} operator")

    @staticmethod
    def _bool(value: str, error: str) -> bool:
        lowered = value.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise QueryError(error)

    def extract_base_filters(self, node: Node, flt: IssueFilter) -> None:
        """Best-effort pre-filter for predicate mode; errors are ignored, OR is skipped."""
        if isinstance(node, Cmp):
            with contextlib.suppress(QueryError):
                self.apply(node, flt)
        elif isinstance(node, And):
            self.extract_base_filters(node.left, flt)
            self.extract_base_filters(node.right, flt)
        elif isinstance(node, Not):
            with contextlib.suppress(QueryError):
                self.apply_not(node, flt)

    # -- predicate mode -------------------------------------------------------

    def predicate(self, node: Node) -> Callable[[Mapping[str, Any]], bool]:
        if isinstance(node, And):
            left, right = self.predicate(node.left), self.predicate(node.right)
            return lambda issue: left(issue) and right(issue)
        if isinstance(node, Or):
            left, right = self.predicate(node.left), self.predicate(node.right)
            return lambda issue: left(issue) or right(issue)
        if isinstance(node, Not):
            inner = self.predicate(node.operand)
            return lambda issue: not inner(issue)
        return self.comparison_predicate(node)

    def comparison_predicate(self, cmp: Cmp) -> Callable[[Mapping[str, Any]], bool]:
        name, op, value = cmp.field, cmp.op, cmp.value
        if name in ("status", "type"):
            column = "status" if name == "status" else "issue_type"
            wanted = value.lower()
            if op not in ("=", "!="):
                raise QueryError(f"{name} does not support {op} operator")
            return _eq_pred(column, op, lambda have: have == wanted)
        if name == "priority":
            try:
                target = int(value)
            except ValueError:
                raise QueryError(f"invalid priority: {value}") from None
            compare = _NUMERIC_OPS[op]
            return lambda issue: compare(int(issue["priority"]), target)
        if name in ("assignee", "owner"):
            if op not in ("=", "!="):
                raise QueryError(f"{name} does not support {op} operator")
            if name == "assignee" and _is_none_word(value):
                return _eq_pred(name, op, lambda have: have == "")
            return _eq_pred(name, op, lambda have: have.lower() == value.lower())
        if name in ("label", "labels"):
            if op not in ("=", "!="):
                raise QueryError(f"label does not support {op} operator")
            none_wanted = _is_none_word(value)

            def present(issue: Mapping[str, Any]) -> bool:
                if none_wanted:
                    return not issue["labels"]
                return any(label.lower() == value.lower() for label in issue["labels"])

            return present if op == "=" else (lambda issue: not present(issue))
        if name in ("title", "description", "desc", "notes"):
            column = "description" if name == "desc" else name
            if op not in ("=", "!="):
                raise QueryError(f"{column} does not support {op} operator")
            if column == "description" and _is_none_word(value):
                return _eq_pred(column, op, lambda have: have == "")
            return _eq_pred(column, op, lambda have: value.lower() in have.lower())
        if name in _TIME_COLUMNS:
            return self._time_predicate(cmp)
        if name == "id":
            if value.endswith("*"):
                if op not in ("=", "!="):
                    raise QueryError("id with wildcard only supports = and != operators")
                return _eq_pred("id", op, lambda have: have.startswith(value[:-1]))
            if op not in ("=", "!="):
                raise QueryError(f"id does not support {op} operator")
            return _eq_pred("id", op, lambda have: have == value)
        if name in ("pinned", "ephemeral", "template"):
            wanted_flag = self._bool(value, f"invalid boolean value: {value}")
            if op not in ("=", "!="):
                raise QueryError(f"boolean field does not support {op} operator")
            return lambda _issue: (not wanted_flag) == (op == "=")
        if name == "has_metadata_key":
            if op != "=":
                raise QueryError("has_metadata_key only supports = operator")
            _check_metadata_key(value)
            return lambda issue: value in _metadata_object(issue)
        if name.startswith("metadata."):
            if op != "=":
                raise QueryError("metadata fields only support = operator")
            key = name.removeprefix("metadata.")
            _check_metadata_key(key)
            return lambda issue: _metadata_scalar_matches(issue, key, value)
        if name in ("spec", "spec_id"):
            raise QueryError(f"fake-bd does not implement the {name!r} query field")
        # bd's predicate switch has no parent/mol_type case either: "unknown field".
        raise QueryError(f"unknown field: {name}")

    def _time_predicate(self, cmp: Cmp) -> Callable[[Mapping[str, Any]], bool]:
        column = _TIME_COLUMNS[cmp.field]
        try:
            target = _time_value(cmp, self.now)
        except QueryError as exc:
            raise QueryError(f"invalid {column.removesuffix('_at')} time: {exc}") from None
        op = cmp.op

        def check(issue: Mapping[str, Any]) -> bool:
            stamp = issue.get(column)
            if stamp is None:
                return False
            actual = _parse_time(stamp)
            if op in ("=", "!="):
                same_day = actual.date() == target.date()
                return same_day if op == "=" else not same_day
            return _NUMERIC_OPS[op](actual, target)

        return check


_NUMERIC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _eq_pred(
    column: str, op: str, test: Callable[[str], bool]
) -> Callable[[Mapping[str, Any]], bool]:
    if op == "=":
        return lambda issue: test(str(issue[column] or ""))
    return lambda issue: not test(str(issue[column] or ""))


def _check_metadata_key(key: str) -> None:
    if not _METADATA_KEY_RE.fullmatch(key):
        raise QueryError(
            f"invalid metadata key {_go_quote(key)}: must match [a-zA-Z_][a-zA-Z0-9_.]*"
        )


def _has_status_comparison(node: Node) -> bool:
    if isinstance(node, Cmp):
        return node.field == "status"
    if isinstance(node, And | Or):
        return _has_status_comparison(node.left) or _has_status_comparison(node.right)
    return _has_status_comparison(node.operand)


def _search_order(issue: Mapping[str, Any]) -> tuple[int, float, str]:
    # SQL: ORDER BY priority ASC, created_at DESC, id ASC
    return (int(issue["priority"]), -_parse_time(issue["created_at"]).timestamp(), issue["id"])


def run_query(
    issues: Sequence[Mapping[str, Any]],
    expression: str,
    *,
    limit: int = DEFAULT_QUERY_LIMIT,
    include_closed: bool = False,
    sort_by: str = "",
    reverse: bool = False,
    now: datetime | None = None,
) -> list[Mapping[str, Any]]:
    """bd query's result set, in bd's order. Raises QueryError with bd's message prefix."""
    try:
        node = parse_query(expression)
    except QueryError as exc:
        raise QueryError(f"parsing query: {exc}") from None
    evaluator = _Evaluator(now or _now())
    flt = IssueFilter()
    predicate: Callable[[Mapping[str, Any]], bool] | None = None
    try:
        if evaluator.filter_only(node):
            evaluator.build_filter(node, flt)
        else:
            predicate = evaluator.predicate(node)
            evaluator.extract_base_filters(node, flt)
    except QueryError as exc:
        raise QueryError(f"evaluating query: {exc}") from None
    if limit > 0 and predicate is None:
        flt.limit = limit
    if not include_closed and flt.status is None and not _has_status_comparison(node):
        flt.exclude_status.append("closed")
    if predicate is not None and limit > 0:
        # bd over-fetches for OR queries, then filters: matches past this window are lost.
        flt.limit = max(limit * 3, 100)
    rows = sorted((issue for issue in issues if flt.matches(issue)), key=_search_order)
    if flt.limit > 0:
        rows = rows[: flt.limit]
    if predicate is not None:
        rows = [issue for issue in rows if predicate(issue)]
        if limit > 0:
            rows = rows[:limit]
    return _sort_issues(rows, sort_by, reverse)


def _sort_issues(
    rows: list[Mapping[str, Any]], sort_by: str, reverse: bool
) -> list[Mapping[str, Any]]:
    """--sort happens *after* the limit, on the already-cut page, exactly like bd."""
    keys: dict[str, Callable[[Mapping[str, Any]], Any]] = {
        "priority": lambda issue: int(issue["priority"]),
        "created": lambda issue: -_parse_time(issue["created_at"]).timestamp(),
        "updated": lambda issue: -_parse_time(issue["updated_at"]).timestamp(),
        "closed": lambda issue: (
            (1, 0.0)
            if issue.get("closed_at") is None
            else (0, -_parse_time(issue["closed_at"]).timestamp())
        ),
        "status": lambda issue: issue["status"],
        "id": lambda issue: issue["id"],
        "title": lambda issue: issue["title"].lower(),
        "type": lambda issue: issue["issue_type"],
        "assignee": lambda issue: issue["assignee"],
    }
    key = keys.get(sort_by)
    if key is None:
        return rows  # bd: empty or unknown sort field leaves the order alone
    # Python's sort is stable; Go's slices.SortFunc is not, so ties may order differently.
    return sorted(rows, key=key, reverse=reverse)


# --------------------------------------------------------------------------- metadata edits


def _metadata_value(raw: str) -> Any:
    """bd's toJSONValue: null/true/false and JSON numbers keep their type, else a string."""
    if raw == "null":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    if _JSON_NUMBER_RE.fullmatch(raw):
        # bd keeps the raw number text; Python re-prints it (1e5 -> 100000.0): close enough.
        return json.loads(raw)
    return raw


def apply_metadata_edits(
    existing: Any, set_pairs: Sequence[str], unset_keys: Sequence[str]
) -> dict[str, Any]:
    """--set-metadata k=v / --unset-metadata k, with bd's validation messages."""
    if not isinstance(existing, Mapping):
        # bd unmarshals the stored JSON into a map first: an array, string... cannot be edited.
        kind = {list: "array", str: "string", bool: "bool", int: "number", float: "number"}
        raise ValueError(
            "existing metadata is not a JSON object: json: cannot unmarshal "
            f"{kind.get(type(existing), 'value')} into Go value of type "
            "map[string]json.RawMessage"
        )
    data = dict(existing)
    for pair in set_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid --set-metadata: expected key=value, got {_go_quote(pair)}")
        _check_metadata_key_value_error(key)
        data[key] = _metadata_value(value)
    for key in unset_keys:
        _check_metadata_key_value_error(key)
        data.pop(key, None)
    return data


def _check_metadata_key_value_error(key: str) -> None:
    try:
        _check_metadata_key(key)
    except QueryError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- CLI plumbing


class UsageError(Exception):
    """A cobra/pflag-level error (unknown flag, missing value, wrong arg count)."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # bool | str | int | array (repeatable) | slice (repeatable, comma-split)
    short: str = ""
    default: Any = None


_GLOBAL_FLAGS = (
    Flag("db", "str", default=""),
    Flag("actor", "str", default=""),
    Flag("json", "bool", default=False),
    Flag("format", "str", default=""),
    Flag("quiet", "bool", "q", False),
    Flag("readonly", "bool", default=False),
    Flag("sandbox", "bool", default=False),
    Flag("verbose", "bool", "v", False),
    Flag("global", "bool", default=False),
    Flag("dolt-auto-commit", "str", default=""),
    Flag("profile", "bool", default=False),
    Flag("help", "bool", "h", False),
)

_DESCRIPTION_FLAGS = (
    Flag("description", "str", "d", ""),
    Flag("body", "str", default=""),
    Flag("message", "str", "m", ""),
)

_COMMAND_FLAGS: dict[str, tuple[Flag, ...]] = {
    "init": (
        Flag("prefix", "str", "p", ""),
        Flag("force", "bool", default=False),
        Flag("skip-hooks", "bool", default=False),
        Flag("skip-agents", "bool", default=False),
        Flag("non-interactive", "bool", default=False),
        Flag("stealth", "bool", default=False),
        Flag("server", "bool", default=False),
        Flag("server-host", "str", default=""),
        Flag("server-port", "int", default=0),
        Flag("server-user", "str", default=""),
        Flag("database", "str", default=""),
        Flag("backend", "str", default=""),
        Flag("role", "str", default=""),
    ),
    "create": (
        Flag("title", "str", default=""),
        Flag("silent", "bool", default=False),
        Flag("priority", "str", "p", "2"),
        Flag("type", "str", "t", "task"),
        Flag("assignee", "str", "a", ""),
        *_DESCRIPTION_FLAGS,
        Flag("design", "str", default=""),
        Flag("acceptance", "str", default=""),
        Flag("notes", "str", default=""),
        Flag("labels", "slice", "l", None),
        Flag("label", "slice", default=None),
        Flag("id", "str", default=""),
        Flag("force", "bool", default=False),
        Flag("metadata", "str", default=""),
    ),
    "query": (
        Flag("limit", "int", "n", DEFAULT_QUERY_LIMIT),
        Flag("all", "bool", "a", False),
        Flag("long", "bool", default=False),
        Flag("sort", "str", default=""),
        Flag("reverse", "bool", "r", False),
        Flag("parse-only", "bool", default=False),
    ),
    "show": (
        Flag("id", "array", default=None),
        Flag("short", "bool", default=False),
        Flag("long", "bool", default=False),
        Flag("local-time", "bool", default=False),
    ),
    "update": (
        Flag("status", "str", "s", ""),
        Flag("priority", "str", "p", ""),
        Flag("title", "str", default=""),
        Flag("type", "str", "t", ""),
        Flag("assignee", "str", "a", ""),
        *_DESCRIPTION_FLAGS,
        Flag("design", "str", default=""),
        Flag("acceptance", "str", default=""),
        Flag("acceptance-criteria", "str", default=""),
        Flag("notes", "str", default=""),
        Flag("append-notes", "str", default=""),
        Flag("add-label", "slice", default=None),
        Flag("remove-label", "slice", default=None),
        Flag("claim", "bool", default=False),
        Flag("session", "str", default=""),
        Flag("metadata", "str", default=""),
        Flag("set-metadata", "array", default=None),
        Flag("unset-metadata", "array", default=None),
    ),
    "note": (
        Flag("stdin", "bool", default=False),
        Flag("file", "str", default=""),
    ),
    "comments": (Flag("local-time", "bool", default=False),),
    "comments add": (
        Flag("file", "str", "f", ""),
        Flag("author", "str", "a", ""),
    ),
    "assign": (),
    "close": (
        Flag("reason", "str", "r", ""),
        Flag("resolution", "str", default=""),
        Flag("message", "str", "m", ""),
        Flag("comment", "str", default=""),
        Flag("force", "bool", "f", False),
        Flag("session", "str", default=""),
    ),
    "version": (),
}
_ALIASES = {"new": "create", "view": "show", "done": "close"}
_USAGE = {
    "init": "bd init [flags]",
    "create": "bd create [title] [flags]",
    "query": "bd query [expression] [flags]",
    "show": "bd show [id...] [--id=<id>...] [--current] [flags]",
    "update": "bd update [id...] [flags]",
    "note": "bd note <id> [text...] [flags]",
    "comments": "bd comments [issue-id] [flags]",
    "comments add": "bd comments add [issue-id] [text] [flags]",
    "assign": "bd assign <id> <name> [flags]",
    "close": "bd close [id...] [flags]",
    "version": "bd version [flags]",
}


@dataclass
class Parsed:
    values: dict[str, Any]
    changed: set[str]
    args: list[str]


def _flag_tables(flags: Sequence[Flag]) -> tuple[dict[str, Flag], dict[str, Flag]]:
    by_name: dict[str, Flag] = {}
    by_short: dict[str, Flag] = {}
    for flag in flags:
        by_name[flag.name] = flag  # a command flag shadows a persistent one, as in cobra
        if flag.short:
            by_short[flag.short] = flag
    return by_name, by_short


def _set_flag(parsed: Parsed, flag: Flag, raw: str | None, spelled: str) -> None:
    parsed.changed.add(flag.name)
    if flag.kind == "bool":
        if raw is None:
            parsed.values[flag.name] = True
            return
        truth = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
        if raw.lower() not in truth:
            raise UsageError(
                f'invalid argument "{raw}" for "{spelled}" flag: strconv.ParseBool: '
                f'parsing "{raw}": invalid syntax'
            )
        parsed.values[flag.name] = truth[raw.lower()]
    elif flag.kind == "int":
        assert raw is not None
        try:
            parsed.values[flag.name] = int(raw)
        except ValueError:
            raise UsageError(
                f'invalid argument "{raw}" for "{spelled}" flag: strconv.ParseInt: '
                f'parsing "{raw}": invalid syntax'
            ) from None
    elif flag.kind == "array":
        assert raw is not None
        parsed.values.setdefault(flag.name, []).append(raw)
    elif flag.kind == "slice":
        assert raw is not None
        parsed.values.setdefault(flag.name, []).extend(
            part.strip() for part in raw.split(",") if part.strip()
        )
    else:
        parsed.values[flag.name] = raw


def parse_flags(argv: Sequence[str], flags: Sequence[Flag]) -> Parsed:
    """pflag-style parsing: flags anywhere, `--x=v`, `--x v`, `-x v`, `-xv`, `-abc`, `--`."""
    by_name, by_short = _flag_tables(flags)
    parsed = Parsed(
        values={
            flag.name: (
                list(flag.default or []) if flag.kind in ("array", "slice") else flag.default
            )
            for flag in flags
        },
        changed=set(),
        args=[],
    )
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            parsed.args.extend(argv[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            flag = by_name.get(name)
            if flag is None:
                raise UsageError(f"unknown flag: --{name}")
            spelled = f"-{flag.short}, --{name}" if flag.short else f"--{name}"
            if flag.kind == "bool":
                _set_flag(parsed, flag, raw if eq else None, spelled)
            else:
                if not eq:
                    if i + 1 >= len(argv):
                        raise UsageError(f"flag needs an argument: --{name}")
                    i += 1
                    raw = argv[i]
                _set_flag(parsed, flag, raw, spelled)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                char = arg[j]
                flag = by_short.get(char)
                if flag is None:
                    raise UsageError(f"unknown shorthand flag: '{char}' in {arg}")
                spelled = f"-{char}, --{flag.name}"
                if flag.kind == "bool":
                    _set_flag(parsed, flag, None, spelled)
                    j += 1
                    continue
                rest = arg[j + 1 :].removeprefix("=")
                if not rest:
                    if i + 1 >= len(argv):
                        raise UsageError(f"flag needs an argument: '{char}' in {arg}")
                    i += 1
                    rest = argv[i]
                _set_flag(parsed, flag, rest, spelled)
                break
        else:
            parsed.args.append(arg)
        i += 1
    return parsed


def find_command(argv: Sequence[str]) -> tuple[str | None, int]:
    """The subcommand name and its index, skipping persistent flags and their values."""
    by_name, by_short = _flag_tables(_GLOBAL_FLAGS)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None, -1
        if arg.startswith("--"):
            name, eq, _ = arg[2:].partition("=")
            flag = by_name.get(name)
            if flag is not None and flag.kind != "bool" and not eq:
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            flag = by_short.get(arg[-1])
            if len(arg) == 2 and flag is not None and flag.kind != "bool":
                i += 1
        else:
            return arg, i
        i += 1
    return None, -1


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list_matches(name: str, command: str) -> bool:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return False
    entries = {entry.strip() for entry in raw.split(",")}
    return bool(entries & {"*", "1", "true", command})


class Session:
    """One bd invocation: output mode, actor, database, and bd's error-printing helpers."""

    def __init__(self, command: str, parsed: Parsed, invoked_as: str | None = None) -> None:
        values = parsed.values
        self.command = command
        self.invoked_as = invoked_as or command  # "done" and "close" differ in one rule
        self.parsed = parsed
        self.json = bool(values.get("json")) or str(values.get("format") or "").lower() == "json"
        if "json" not in parsed.changed and "format" not in parsed.changed:
            # viper binds BD_JSON like the flag
            self.json = self.json or _truthy_env("BD_JSON")
        self.quiet = bool(values.get("quiet"))
        self.readonly = bool(values.get("readonly")) or _truthy_env("BD_READONLY")
        self.actor = self._actor(str(values.get("actor") or ""))
        self.garbage = _env_list_matches("FAKE_BD_GARBAGE", command)
        self.db_dir = self._db_dir(str(values.get("db") or ""))
        # bd keeps "last touched" in the beads dir it finds from BEADS_DIR or the cwd, never
        # via --db; the fake does no cwd discovery, so only BEADS_DIR users get it.
        self.tracks_last_touched = (
            not values.get("db")
            and not os.environ.get("BD_DB")
            and bool(os.environ.get("BEADS_DIR"))
        )

    @staticmethod
    def _actor(flag_value: str) -> str:
        # bd: --actor > BEADS_ACTOR > BD_ACTOR > git config user.name > $USER > "unknown".
        # The fake skips git (no subprocess per call); set --actor or BEADS_ACTOR in tests.
        if flag_value:
            return flag_value
        for env in ("BEADS_ACTOR", "BD_ACTOR", "USER"):
            value = os.environ.get(env, "")
            if value:
                return value
        return "unknown"

    @staticmethod
    def _db_dir(flag_value: str) -> Path | None:
        """Where the state lives: --db, else BEADS_DIR, else BEADS_DB (bd's order).

        Real bd also accepts a path *inside* the beads dir (e.g. DIR/metadata.json, or the
        dolt data path); the fake accepts a file path and uses its parent directory.
        """
        raw = flag_value or os.environ.get("BD_DB", "")
        raw = raw or os.environ.get("BEADS_DIR", "") or os.environ.get("BEADS_DB", "")
        if not raw:
            return None
        path = Path(raw).expanduser()
        if not path.is_dir() and path.parent.is_dir() and (path.parent / STATE_FILE).is_file():
            return path.parent
        return path

    def touch(self, state: State, issue_id: str) -> None:
        if self.tracks_last_touched:
            state.last_touched = issue_id

    def last_touched(self, state: State) -> str:
        return state.last_touched if self.tracks_last_touched else ""

    # -- output helpers ---------------------------------------------------------

    def out(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        sys.stderr.write(text + "\n")

    def emit_json(self, value: Any) -> None:
        text = _go_json(value) + "\n"
        if self.garbage:
            # Cut mid-document: the caller sees a start that parses as nothing.
            text = text[: max(1, len(text) // 2)]
        sys.stdout.write(text)

    def fatal(self, message: str) -> NoReturn:
        """bd's FatalError: always stderr (JSON-shaped there under --json), exit 1."""
        if self.json:
            self.err(_go_json({"error": message}))
        else:
            self.err(f"Error: {message}")
        raise SystemExit(1)

    def fatal_respect_json(self, message: str) -> NoReturn:
        """bd's FatalErrorRespectJSON: under --json the error object goes to *stdout*."""
        if self.json:
            self.out(_go_json({"error": message}))
        else:
            self.err(f"Error: {message}")
        raise SystemExit(1)

    def role_warning(self) -> None:
        """bd's routing check warns when `git config beads.role` is unset.

        Real bd runs it on every create and whenever an id is not found locally (the
        contributor auto-routing fallback), so production stderr carries these lines.
        The fake cannot cheaply ask git, so it prints them only with FAKE_BD_ROLE_WARNING=1.
        """
        if _truthy_env("FAKE_BD_ROLE_WARNING"):
            self.err("warning: beads.role not configured (GH#2950).")
            self.err("  Fix: git config beads.role maintainer")
            self.err("  Or:  git config beads.role contributor")

    def check_readonly(self, operation: str) -> None:
        if self.readonly:
            self.fatal(f"operation '{operation}' is not allowed in read-only mode")

    def store(self) -> Store:
        if self.db_dir is None:
            self._no_database()
        return Store(self.db_dir)

    def _no_database(self) -> NoReturn:
        # bd prints these three lines itself (not via FatalError), so --json changes nothing.
        self.err("Error: no beads database found")
        self.err(
            "Hint: run 'bd where' to inspect the resolved workspace, or 'bd init' to create "
            "a new database"
        )
        self.err("      or set BEADS_DIR to point to your .beads directory")
        raise SystemExit(1)

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[State]:
        store = self.store()
        try:
            with store.transaction(write=write) as state:
                yield state
        except NotInitialized:
            # Real bd's message depends on what is missing; this one is the common case.
            self._no_database()

    def now(self) -> datetime:
        return _now()


# --------------------------------------------------------------------------- commands


def _priority(raw: str) -> int | None:
    """bd's ParsePriority: optional P prefix, Sscanf %d (trailing junk ignored), 0..4."""
    text = raw.strip()
    if text[:1] in ("P", "p"):
        text = text[1:]
    match = re.match(r"[+-]?\d+", text)
    if not match:
        return None
    value = int(match.group(0))
    return value if 0 <= value <= 4 else None


def _invalid_priority(raw: str) -> str:
    return (
        f"invalid priority {_go_quote(raw)} (expected 0-4 or P0-P4, not words like high/medium/low)"
    )


def _description(parsed: Parsed) -> tuple[str, bool]:
    for name in ("description", "body", "message"):
        if name in parsed.changed:
            return str(parsed.values[name]), True
    return "", False


def _read_metadata_flag(session: Session, raw: str, *, respect_json: bool) -> dict[str, Any]:
    fail = session.fatal_respect_json if respect_json else session.fatal
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"failed to read metadata file {raw[1:]}: {exc.strerror}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        fail("invalid JSON in --metadata: must be valid JSON")
    if not isinstance(value, dict):
        # bd stores any JSON; the fake's model (and bd's merge code) want an object.
        fail("fake-bd only supports a JSON object for --metadata")
    return value


def cmd_version(session: Session) -> None:
    if session.json:
        session.emit_json({"version": VERSION, "build": "fake-bd"})
    else:
        session.out(f"bd version {VERSION} (fake-bd)")


def cmd_init(session: Session) -> None:
    values = session.parsed.values
    db_dir = session.db_dir or Path.cwd() / ".beads"  # real bd inits ./.beads
    prefix = str(values.get("prefix") or DEFAULT_PREFIX).rstrip("-")
    # Real bd defaults the prefix to the current directory's name; "bd" is friendlier here.
    store = Store(db_dir)
    if store.exists() and not values.get("force"):
        session.err("Error: This workspace is already initialized.")
        session.err(f"  Database: {store.state_path}")
        session.err("  Use --force to re-initialize (may cause data loss).")
        raise SystemExit(1)
    with store.transaction(create=True) as state:
        state.prefix = prefix
        state.issues.clear()
        state.last_touched = ""
    _write_metadata_json(db_dir, prefix)
    if not session.quiet:
        session.out("")
        session.out("✓ bd initialized successfully!")
        session.out("")
        session.out("  Backend: fake-bd")
        session.out(f"  Database: {store.state_path}")
        session.out(f"  Issue prefix: {prefix}")
        session.out(f"  Issues will be named: {prefix}-<hash> (e.g., {prefix}-a3f2dd)")


def cmd_create(session: Session) -> None:
    session.check_readonly("create")
    parsed = session.parsed
    values = parsed.values
    title_flag = str(values.get("title") or "")
    if parsed.args and title_flag:
        if parsed.args[0] != title_flag:
            session.fatal(
                "cannot specify different titles as both positional argument and --title "
                f"flag\n  Positional: {_go_quote(parsed.args[0])}\n  --title:    "
                f"{_go_quote(title_flag)}"
            )
        title = title_flag
    elif parsed.args:
        title = parsed.args[0]
        if title.startswith("-"):
            session.fatal(
                f"title {_go_quote(title)} looks like a flag (starts with '-').\n  Run 'bd "
                "create --help' for available options.\n  To use this title anyway, pass it "
                f"explicitly: bd create --title={_go_quote(title)}"
            )
    elif title_flag:
        title = title_flag
    else:
        session.fatal("title required (or use --file to create from markdown)")

    description, _ = _description(parsed)
    raw_priority = str(values.get("priority") or "2")
    priority = _priority(raw_priority)
    if priority is None:
        session.fatal(_invalid_priority(raw_priority))
    issue_type = str(values.get("type") or "task")
    issue_type = TYPE_ALIASES.get(issue_type.lower(), issue_type)
    metadata: dict[str, Any] = {}
    if "metadata" in parsed.changed:
        metadata = _read_metadata_flag(session, str(values["metadata"]), respect_json=False)

    session.role_warning()  # bd's auto-routing runs here, before the id checks
    explicit_id = str(values.get("id") or "")
    with session.transaction(write=True) as state:
        if explicit_id:
            if "-" not in explicit_id:
                session.fatal(
                    f"invalid ID format '{explicit_id}' (expected format: prefix-hash or "
                    "prefix-hash.number, e.g., 'bd-a3f8e9' or 'bd-a3f8e9.1')"
                )
            if not values.get("force") and not explicit_id.startswith(state.prefix + "-"):
                session.fatal(
                    f"prefix mismatch: database uses '{state.prefix}-' but ID '{explicit_id}' "
                    "doesn't match (use --force to override)"
                )
        if issue_type not in ISSUE_TYPES:
            # bd fails in the storage layer, before the id exists: hence "issue :".
            session.fatal(
                f"validation failed for issue {explicit_id}: invalid issue type: {issue_type}"
            )
        moment = session.now()
        issue_id = explicit_id or _generate_id(
            state.issues, state.prefix, title, description, session.actor, moment
        )
        issue = _blank_issue()
        previous = state.issues.get(issue_id)
        if previous is not None:
            # bd's INSERT ... ON DUPLICATE KEY UPDATE: an explicit existing id is silently
            # overwritten; created_at/created_by/owner and labels survive.
            issue.update(
                {key: previous[key] for key in ("created_at", "created_by", "owner", "labels")}
            )
        else:
            issue["created_at"] = _db_time(moment)
            issue["created_by"] = session.actor
            issue["owner"] = os.environ.get("GIT_AUTHOR_EMAIL", "")  # bd also asks git
        issue.update(
            id=issue_id,
            title=title,
            description=description,
            design=str(values.get("design") or ""),
            acceptance_criteria=str(values.get("acceptance") or ""),
            notes=str(values.get("notes") or ""),
            priority=priority,
            issue_type=issue_type,
            assignee=str(values.get("assignee") or ""),
            updated_at=_db_time(moment),
            metadata=metadata,
        )
        labels = list(values.get("labels") or []) + list(values.get("label") or [])
        issue["labels"] = sorted(set(issue["labels"]) | set(labels))
        state.issues[issue_id] = issue
        session.touch(state, issue_id)

    if session.json:
        # bd prints the in-memory struct: nanosecond stamps, no labels (added afterwards).
        printed = render_issue(issue, labels=False)
        if previous is None:
            printed["created_at"] = _nano_time(moment)
        printed["updated_at"] = _nano_time(moment)
        if metadata:
            printed["metadata"] = metadata  # raw input order, not sorted
        session.emit_json(printed)
    elif values.get("silent"):
        session.out(issue_id)
    else:
        session.out(f"✓ Created issue: {issue_id} — {title}")
        session.out(f"  Priority: P{priority}")
        session.out("  Status: open")


def cmd_query(session: Session) -> None:
    parsed = session.parsed
    values = parsed.values
    if not parsed.args:
        session.err("Error: query expression is required\n")
        session.out(f"Usage:\n  {_USAGE['query']}")
        raise SystemExit(1)
    expression = " ".join(parsed.args)
    if values.get("parse-only"):
        try:
            node = parse_query(expression)
        except QueryError as exc:
            session.fatal(f"parsing query: {exc}")
        session.out(f"Parsed query: {node}")
        return
    with session.transaction(write=False) as state:
        try:
            rows = run_query(
                list(state.issues.values()),
                expression,
                limit=int(values.get("limit") or 0),
                include_closed=bool(values.get("all")),
                sort_by=str(values.get("sort") or ""),
                reverse=bool(values.get("reverse")),
                now=session.now(),
            )
        except QueryError as exc:
            session.fatal(str(exc))
    if session.json:
        session.emit_json([render_query_row(issue) for issue in rows])
        return
    if not rows:
        session.out(f"No issues found matching query: {expression}")
        return
    session.out(f"Found {len(rows)} issues:")
    for issue in rows:
        assignee = f" @{issue['assignee']}" if issue["assignee"] else ""
        labels = f" [{' '.join(issue['labels'])}]" if issue["labels"] else ""
        session.out(
            f"○ {issue['id']} [P{issue['priority']}] [{issue['issue_type']}]{assignee}{labels}"
            f" - {issue['title']}"
        )


def cmd_show(session: Session) -> None:
    parsed = session.parsed
    ids = list(parsed.args) + list(parsed.values.get("id") or [])
    if not ids:
        session.fatal_respect_json(
            "at least one issue ID is required (use positional args, --id flag, or --current)"
        )
    found: list[dict[str, Any]] = []
    with session.transaction(write=True) as state:
        for raw in ids:
            try:
                issue_id = _resolve_id(state.issues, state.prefix, raw)
            except IdNotFound as exc:
                session.role_warning()
                session.err(f"Error fetching {raw}: {exc}")
                continue
            found.append(state.issues[issue_id])
        if found:
            session.touch(state, ids[0])  # bd records the first argument as typed
    if session.json:
        if not found:
            session.fatal_respect_json("no issues found matching the provided IDs")
        session.emit_json([render_show(issue) for issue in found])
        return
    if not found:
        raise SystemExit(1)
    for index, issue in enumerate(found):
        if parsed.values.get("short"):
            icon = _STATUS_ICONS.get(issue["status"], "◇")
            badge = f"[{issue['issue_type']}] " if issue["issue_type"] in ("epic", "bug") else ""
            if issue["status"] == "closed":
                session.out(
                    f"{icon} {issue['id']} ● P{issue['priority']} {issue['issue_type']} "
                    f"{issue['title']}"
                )
            else:
                session.out(f"{icon} {issue['id']} ● P{issue['priority']} {badge}{issue['title']}")
            continue
        if index:
            session.out("\n" + "─" * 60 + "\n")
        # A simplified human view; nothing should parse bd's non-JSON show output.
        session.out(
            f"{issue['id']} · {issue['title']}   [P{issue['priority']} · {issue['status'].upper()}]"
        )
        for key in ("assignee", "description", "acceptance_criteria", "notes"):
            if issue[key]:
                session.out(f"{key.upper()}: {issue[key]}")


_STATUS_ICONS = {
    "open": "○",
    "in_progress": "◐",
    "blocked": "●",
    "closed": "✓",
    "deferred": "❄",
    "pinned": "📌",
}


def _set_status(issue: dict[str, Any], status: str, stamp: str) -> None:
    """bd's ManageClosedAt / ManageStartedAt side effects of a status change."""
    old = issue["status"]
    issue["status"] = status
    if status == "closed":
        issue["closed_at"] = stamp
    elif old == "closed":
        issue["closed_at"] = None
        issue["close_reason"] = ""
    if status == "in_progress" and issue["started_at"] is None:
        issue["started_at"] = stamp


def _claim(issue: dict[str, Any], actor: str, stamp: str) -> str | None:
    """bd's ClaimIssueInTx. Returns an error text, or None on success.

    The compare-and-swap is on the assignee ONLY: status is neither checked nor required
    to be open. An unassigned closed/blocked bead is claimed (status -> in_progress,
    closed_at and close_reason left as they were); a bead already assigned to the actor is
    a no-op success whatever its status (a blocked bead stays blocked).
    """
    current = issue["assignee"] or ""
    if current == "":
        issue["assignee"] = actor
        issue["status"] = "in_progress"
        issue["updated_at"] = stamp
        if issue["started_at"] is None:
            issue["started_at"] = stamp
        return None
    if current == actor:
        return None
    return f"issue already claimed by {current}"


def cmd_update(session: Session) -> None:
    session.check_readonly("update")
    parsed = session.parsed
    values, changed = parsed.values, parsed.changed
    updates: dict[str, Any] = {}
    if "status" in changed:
        status = str(values["status"])
        if status not in STATUSES:
            session.fatal_respect_json(
                f"invalid status {_go_quote(status)} (built-in: open, in_progress, blocked, "
                "deferred, closed, pinned, hooked; or configure custom statuses via 'bd config "
                "set status.custom')"
            )
        updates["status"] = status
        if status == "closed":
            session_id = str(values.get("session") or os.environ.get("CLAUDE_SESSION_ID", ""))
            if session_id:
                updates["closed_by_session"] = session_id
    if "priority" in changed:
        priority = _priority(str(values["priority"]))
        if priority is None:
            session.fatal_respect_json(_invalid_priority(str(values["priority"])))
        updates["priority"] = priority
    if "title" in changed:
        title = str(values["title"]).strip()
        if not title:
            session.fatal_respect_json("title cannot be empty")
        updates["title"] = title
    if "assignee" in changed:
        updates["assignee"] = str(values["assignee"])
    description, description_changed = _description(parsed)
    if description_changed:
        updates["description"] = description
    if "design" in changed:
        updates["design"] = str(values["design"])
    if "notes" in changed and "append-notes" in changed:
        session.fatal_respect_json("cannot specify both --notes and --append-notes")
    if "notes" in changed:
        updates["notes"] = str(values["notes"])
    if "acceptance" in changed or "acceptance-criteria" in changed:
        key = "acceptance" if "acceptance" in changed else "acceptance-criteria"
        updates["acceptance_criteria"] = str(values[key])
    if "type" in changed:
        issue_type = str(values["type"])
        issue_type = TYPE_ALIASES.get(issue_type.lower(), issue_type)
        if issue_type not in ISSUE_TYPES:
            session.fatal_respect_json(
                f"invalid issue type {_go_quote(issue_type)}. Valid types: bug, feature, task, "
                "epic, chore, decision"
            )
        updates["issue_type"] = issue_type
    merge_metadata: dict[str, Any] | None = None
    if "metadata" in changed:
        merge_metadata = _read_metadata_flag(session, str(values["metadata"]), respect_json=True)
        updates["metadata"] = merge_metadata
    set_pairs = list(values.get("set-metadata") or [])
    unset_keys = list(values.get("unset-metadata") or [])
    if (set_pairs or unset_keys) and "metadata" in changed:
        session.fatal_respect_json(
            "cannot combine --metadata with --set-metadata or --unset-metadata"
        )
    append_notes = str(values["append-notes"]) if "append-notes" in changed else None
    add_labels = list(values.get("add-label") or [])
    remove_labels = list(values.get("remove-label") or [])
    claim = bool(values.get("claim"))
    has_edits = bool(updates or set_pairs or unset_keys or add_labels or remove_labels)
    if not has_edits and append_notes is None and not claim:
        session.out("No updates specified")
        return

    updated: list[dict[str, Any]] = []
    with session.transaction(write=True) as state:
        ids = list(parsed.args)
        if not ids:
            if not session.last_touched(state):
                session.fatal_respect_json("no issue ID provided and no last touched issue")
            ids = [session.last_touched(state)]
        for raw in ids:
            try:
                issue_id = _resolve_id(state.issues, state.prefix, raw)
            except IdNotFound as exc:
                session.role_warning()
                session.err(f"Error resolving {raw}: {exc}")
                continue
            issue = state.issues[issue_id]
            stamp = _db_time(session.now())
            if claim:
                problem = _claim(issue, session.actor, stamp)
                if problem is not None:
                    session.err(f"Error claiming {raw}: {problem}")
                    continue
            fields = dict(updates)
            if merge_metadata is not None:
                current = issue["metadata"] if isinstance(issue["metadata"], Mapping) else {}
                fields["metadata"] = {**current, **merge_metadata}
            if set_pairs or unset_keys:
                try:
                    fields["metadata"] = apply_metadata_edits(
                        issue["metadata"], set_pairs, unset_keys
                    )
                except ValueError as exc:
                    session.fatal_respect_json(f"metadata edit failed for {raw}: {exc}")
            if append_notes is not None:
                fields["notes"] = (
                    issue["notes"] + "\n" + append_notes if issue["notes"] else append_notes
                )
            if fields:
                issue["updated_at"] = stamp
                for key, value in fields.items():
                    if key == "status":
                        _set_status(issue, value, stamp)
                    else:
                        issue[key] = value
            if add_labels or remove_labels:
                labels = (set(issue["labels"]) | set(add_labels)) - set(remove_labels)
                issue["labels"] = sorted(labels)
            updated.append(issue)
        if updated:
            session.touch(state, updated[0]["id"])
    if session.json and updated:
        session.emit_json([render_issue(issue) for issue in updated])
    elif not session.json:
        for issue in updated:
            session.out(f"✓ Updated issue: {issue['id']} — {issue['title']}")
    if not updated:
        raise SystemExit(1)


def cmd_note(session: Session) -> None:
    session.check_readonly("note")
    parsed = session.parsed
    if not parsed.args:
        session.err("Error: requires at least 1 arg(s), only received 0")
        session.err(f"Usage:\n  {_USAGE['note']}")
        raise SystemExit(1)
    raw_id, words = parsed.args[0], parsed.args[1:]
    if parsed.values.get("stdin"):
        text = sys.stdin.read().rstrip("\n")
    elif parsed.values.get("file"):
        try:
            text = Path(str(parsed.values["file"])).read_text(encoding="utf-8")
        except OSError as exc:
            session.fatal_respect_json(f"reading file: {exc.strerror}")
    elif words:
        text = " ".join(words)
    else:
        session.fatal_respect_json(
            "no note text provided (use positional args, --stdin, or --file)"
        )
    if not text:
        session.fatal_respect_json("note text is empty")
    with session.transaction(write=True) as state:
        try:
            issue_id = _resolve_id(state.issues, state.prefix, raw_id)
        except IdNotFound as exc:
            session.role_warning()
            session.fatal_respect_json(f"resolving {raw_id}: {exc}")
        issue = state.issues[issue_id]
        issue["notes"] = issue["notes"] + "\n" + text if issue["notes"] else text
        issue["updated_at"] = _db_time(session.now())
        session.touch(state, issue_id)
    if session.json:
        session.emit_json(render_issue(issue))  # one object, not an array
    else:
        session.out(f"✓ Note added to {issue_id} — {issue['title']}")


def cmd_comments(session: Session) -> None:
    """`bd comments ID`: the issue's comments, oldest first (`[]` under --json when none)."""
    args = session.parsed.args
    if not args:
        session.err("Error: requires at least 1 arg(s), only received 0")
        session.err(f"Usage:\n  {_USAGE['comments']}")
        raise SystemExit(1)
    raw_id = args[0]
    with session.transaction(write=False) as state:
        try:
            issue_id = _resolve_id(state.issues, state.prefix, raw_id)
        except IdNotFound as exc:
            session.role_warning()
            session.fatal_respect_json(f"resolving {raw_id}: {exc}")
        comments = _comments_in_order(state.issues[issue_id])
    if session.json:
        session.emit_json([render_comment(comment) for comment in comments])
        return
    if not comments:
        session.out(f"No comments on {issue_id}")
        return
    session.out(f"\nComments on {issue_id}:\n")
    for comment in comments:
        stamp = _parse_time(comment["created_at"]).strftime("%Y-%m-%d %H:%M")
        session.out(f"[{comment['author']}] at {stamp}")
        for line in str(comment["text"]).splitlines() or [""]:
            session.out(f"  {line}")
        session.out()


def cmd_comments_add(session: Session) -> None:
    """`bd comments add ID TEXT`: a row in the comments table; the issue itself is untouched.

    Real bd neither bumps the issue's updated_at nor touches its notes, so a comment can
    never overwrite a note written at the same moment (unlike --append-notes).
    """
    session.check_readonly("comment add")
    parsed = session.parsed
    args = parsed.args
    if not args:
        session.err("Error: requires at least 1 arg(s), only received 0")
        session.err(f"Usage:\n  {_USAGE['comments add']}")
        raise SystemExit(1)
    raw_id = args[0]
    source = str(parsed.values.get("file") or "")
    if source:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            session.fatal_respect_json(f"reading file: {exc.strerror}")
    elif len(args) < 2:
        session.fatal_respect_json("comment text required (use -f to read from file)")
    else:
        text = args[1]  # cobra: words after the text are ignored (MinimumNArgs(1))
    if not text.strip():
        session.fatal_respect_json("comment text cannot be empty")
    author = str(parsed.values.get("author") or "") or session.actor
    moment = session.now()
    with session.transaction(write=True) as state:
        try:
            issue_id = _resolve_id(state.issues, state.prefix, raw_id)
        except IdNotFound as exc:
            session.role_warning()
            session.fatal_respect_json(f"resolving {raw_id}: {exc}")
        comment = _new_comment(issue_id, author, text, moment)
        state.issues[issue_id]["comments"].append(comment)
    if session.json:
        # bd prints the in-memory struct: a nanosecond stamp, before any database round trip.
        session.emit_json({**render_comment(comment), "created_at": _nano_time(moment)})
    else:
        session.out(f"Comment added to {issue_id}")


def cmd_assign(session: Session) -> None:
    session.check_readonly("assign")
    args = session.parsed.args
    if len(args) != 2:
        session.err(f"Error: accepts 2 arg(s), received {len(args)}")
        session.err(f"Usage:\n  {_USAGE['assign']}")
        raise SystemExit(1)
    raw_id, assignee = args
    with session.transaction(write=True) as state:
        try:
            issue_id = _resolve_id(state.issues, state.prefix, raw_id)
        except IdNotFound as exc:
            session.role_warning()
            session.fatal_respect_json(f"resolving {raw_id}: {exc}")
        issue = state.issues[issue_id]
        issue["assignee"] = assignee
        issue["updated_at"] = _db_time(session.now())
        session.touch(state, issue_id)
    if session.json:
        session.emit_json(render_issue(issue))
    elif assignee:
        session.out(f"✓ Assigned {issue_id} — {issue['title']} to {assignee}")
    else:
        session.out(f"✓ Unassigned {issue_id} — {issue['title']}")


def cmd_close(session: Session) -> None:
    session.check_readonly("close")
    values = session.parsed.values
    reason = next(
        (
            str(values[name])
            for name in ("reason", "resolution", "message", "comment")
            if values.get(name)
        ),
        "",
    )
    args = list(session.parsed.args)
    if not reason and session.invoked_as == "done" and len(args) >= 2:
        reason = args.pop()
    reason = reason or "Closed"
    closed: list[dict[str, Any]] = []
    with session.transaction(write=True) as state:
        if not args:
            if not session.last_touched(state):
                session.fatal_respect_json("no issue ID provided and no last touched issue")
            args = [session.last_touched(state)]
        resolved: list[str] = []
        for raw in args:
            try:
                resolved.append(_resolve_id(state.issues, state.prefix, raw))
            except IdNotFound as exc:
                session.fatal_respect_json(f"resolving ID {raw}: {exc}")
        # The fake models no dependencies, gates or pinned issues, so bd's close guards
        # (open blockers, epic children, gates) never fire.
        stamp = _db_time(session.now())
        session_id = str(values.get("session") or os.environ.get("CLAUDE_SESSION_ID", ""))
        for issue_id in resolved:
            issue = state.issues[issue_id]
            issue.update(
                status="closed",
                closed_at=stamp,
                updated_at=stamp,
                close_reason=reason,
                closed_by_session=session_id,
            )
            closed.append(issue)
    if session.json:
        if closed:
            session.emit_json([render_issue(issue) for issue in closed])
    else:
        for issue in closed:
            session.out(f"✓ Closed {issue['id']} — {issue['title']}: {reason}")
    if not closed:
        raise SystemExit(1)


_COMMANDS: dict[str, Callable[[Session], None]] = {
    "init": cmd_init,
    "create": cmd_create,
    "query": cmd_query,
    "show": cmd_show,
    "update": cmd_update,
    "note": cmd_note,
    "comments": cmd_comments,
    "comments add": cmd_comments_add,
    "assign": cmd_assign,
    "close": cmd_close,
    "version": cmd_version,
}


def _log_call(argv: Sequence[str], command: str | None) -> None:
    path = os.environ.get("FAKE_BD_CALL_LOG", "").strip()
    if not path:
        return
    line = json.dumps(
        {
            "argv": list(argv),
            "subcommand": command,
            "pid": os.getpid(),
            "time": time.time(),
            "cwd": os.getcwd(),
        }
    )
    # One O_APPEND write per line keeps lines whole across concurrent processes.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _print_root_usage() -> None:
    sys.stdout.write(
        "bd - Dependency-aware issue tracker (fake-bd: a test double of bd 1.0.2)\n\n"
        "Usage:\n  bd [command]\n\nCommands implemented by the fake:\n"
        + "".join(f"  {name}\n" for name in _COMMANDS)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one bd command; returns the exit status (SystemExit carries early exits)."""
    args = list(sys.argv[1:] if argv is None else argv)
    name, index = find_command(args)
    command = _ALIASES.get(name or "", name)
    _log_call(args, command)
    if command is None:
        _print_root_usage()
        return 0
    if command not in _COMMANDS:
        sys.stderr.write(f'Error: unknown command "{name}" for "bd"\n')
        sys.stderr.write("Run 'bd --help' for usage.\n")
        return 1
    rest = args[:index] + args[index + 1 :]
    knob_name = command  # the fault knobs and the call log name the top-level command
    if command == "comments":
        sub, sub_index = find_command(rest)
        if sub == "add":
            command = "comments add"
            rest = rest[:sub_index] + rest[sub_index + 1 :]
    try:
        parsed = parse_flags(rest, (*_GLOBAL_FLAGS, *_COMMAND_FLAGS[command]))
    except UsageError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.stderr.write(f"Usage:\n  {_USAGE[command]}\n\n")
        sys.stderr.write("(fake-bd implements only the subset of bd's flags its tests use)\n")
        return 1
    if parsed.values.get("help"):
        sys.stdout.write(f"Usage:\n  {_USAGE[command]}\n")
        return 0
    session = Session(knob_name, parsed, invoked_as=name)
    hang = os.environ.get("FAKE_BD_HANG_SECONDS", "").strip()
    if hang and (
        not os.environ.get("FAKE_BD_HANG_ON", "").strip()
        or _env_list_matches("FAKE_BD_HANG_ON", knob_name)
    ):
        time.sleep(float(hang))
    if _env_list_matches("FAKE_BD_FAIL", knob_name):
        session.fatal(f"fake-bd: injected failure for '{knob_name}' (FAKE_BD_FAIL)")
    _COMMANDS[command](session)
    return 0


# --------------------------------------------------------------------------- Python API


_TIME_FIELDS = ("created_at", "updated_at", "started_at", "closed_at")


class FakeBd:
    """Direct access to a fake bd database, for test setup and assertions.

    Every method takes the same file lock as the CLI, so it is safe to use while fake bd
    processes run.
    """

    executable: Path = EXECUTABLE

    def __init__(self, db_dir: str | os.PathLike[str]) -> None:
        self.db_dir = Path(db_dir)
        self._store = Store(self.db_dir)

    @property
    def state_path(self) -> Path:
        return self._store.state_path

    # -- setup ----------------------------------------------------------------

    def init(self, prefix: str = DEFAULT_PREFIX) -> None:
        with self._store.transaction(create=True) as state:
            state.prefix = prefix.rstrip("-")
            state.issues.clear()
            state.last_touched = ""
        _write_metadata_json(self.db_dir, prefix.rstrip("-"))

    def create(
        self,
        title: str,
        *,
        priority: int = 2,
        issue_type: str = "task",
        status: str = "open",
        assignee: str | None = None,
        owner: str | None = None,
        description: str | None = None,
        design: str | None = None,
        acceptance: str | None = None,
        notes: str | None = None,
        labels: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_at: str | datetime | None = None,
        updated_at: str | datetime | None = None,
        started_at: str | datetime | None = None,
        closed_at: str | datetime | None = None,
        close_reason: str | None = None,
        created_by: str = "fake-setup",
        issue_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        dependency_count: int = 0,
        dependent_count: int = 0,
        comment_count: int = 0,
    ) -> str:
        """Insert one issue directly (no CLI validation) and return its id.

        Timestamps default to now; status side effects follow bd's create: a closed issue
        gets closed_at (updated_at + 1 s, as bd does) and an in_progress one started_at.
        """
        if not self._store.exists():
            self.init()
        moment = _now()
        created = _db_time(created_at if created_at is not None else moment)
        updated = _db_time(updated_at if updated_at is not None else created)
        with self._store.transaction() as state:
            new_id = issue_id or _generate_id(
                state.issues, state.prefix, title, description or "", created_by, moment
            )
            if new_id in state.issues:
                raise ValueError(f"issue {new_id} already exists")
            issue = _blank_issue()
            issue.update(
                id=new_id,
                title=title,
                description=description or "",
                design=design or "",
                acceptance_criteria=acceptance or "",
                notes=notes or "",
                status=status,
                priority=priority,
                issue_type=issue_type,
                assignee=assignee or "",
                owner=owner or "",
                created_at=created,
                created_by=created_by,
                updated_at=updated,
                started_at=_db_time(started_at) if started_at is not None else None,
                closed_at=_db_time(closed_at) if closed_at is not None else None,
                close_reason=close_reason or "",
                metadata=dict(metadata or {}),
                labels=sorted(set(labels or ())),
                extra=dict(extra or {}),
                dependency_count=dependency_count,
                dependent_count=dependent_count,
                comment_count=comment_count,
            )
            if status == "closed" and issue["closed_at"] is None:
                issue["closed_at"] = _db_time(_parse_time(updated) + timedelta(seconds=1))
            if status == "in_progress" and issue["started_at"] is None:
                issue["started_at"] = updated
            state.issues[new_id] = issue
        return new_id

    def set_fields(self, issue_id: str, **fields: Any) -> None:
        """Overwrite stored fields verbatim (no side effects), e.g. to backdate updated_at.

        Field names are bd's JSON names plus `labels`, `extra`, `comments` (stored rows) and
        the three query counts; `acceptance` is accepted for `acceptance_criteria`. Times may
        be datetimes.
        """
        with self._store.transaction() as state:
            issue = state.issues[issue_id]
            for key, value in fields.items():
                name = "acceptance_criteria" if key == "acceptance" else key
                if name not in issue:
                    raise KeyError(f"unknown issue field {key!r}")
                if name in _TIME_FIELDS and value is not None:
                    value = _db_time(value)
                elif name == "labels":
                    value = sorted(set(value))
                elif name == "extra" or (name == "metadata" and isinstance(value, Mapping)):
                    # Metadata may be any JSON value, as bd stores it (`["x"]` included).
                    value = dict(value)
                issue[name] = value

    def delete(self, issue_id: str) -> None:
        with self._store.transaction() as state:
            del state.issues[issue_id]

    def comment(
        self,
        issue_id: str,
        text: str,
        *,
        author: str = "fake-setup",
        created_at: str | datetime | None = None,
    ) -> str:
        """Add a comment directly (as `bd comments add` would, dated `created_at`); its id.

        Like real bd, the issue's updated_at is left alone.
        """
        moment = _parse_time(created_at) if created_at is not None else _now()
        with self._store.transaction() as state:
            comment = _new_comment(issue_id, author, text, moment)
            state.issues[issue_id]["comments"].append(comment)
        return str(comment["id"])

    # -- inspection -------------------------------------------------------------

    def get(self, issue_id: str) -> dict[str, Any]:
        """The issue as `bd show --json` prints it (one element). KeyError if absent."""
        with self._store.transaction(write=False) as state:
            return render_show(state.issues[issue_id])

    def all(self) -> list[dict[str, Any]]:
        """Every issue, closed ones included, in insertion order, as `bd show` prints them."""
        with self._store.transaction(write=False) as state:
            return [render_show(issue) for issue in state.issues.values()]

    def raw(self, issue_id: str) -> dict[str, Any]:
        """The stored record, including empty fields, counts and extras."""
        with self._store.transaction(write=False) as state:
            return dict(state.issues[issue_id])

    def comments(self, issue_id: str) -> list[dict[str, Any]]:
        """What `bd comments ID --json` would print: the comments, oldest first."""
        with self._store.transaction(write=False) as state:
            return [render_comment(c) for c in _comments_in_order(state.issues[issue_id])]

    def ids(self) -> list[str]:
        with self._store.transaction(write=False) as state:
            return list(state.issues)

    def query(self, expression: str, **options: Any) -> list[dict[str, Any]]:
        """What `bd query EXPR --json` would print (same keyword options as run_query)."""
        with self._store.transaction(write=False) as state:
            rows = run_query(list(state.issues.values()), expression, **options)
            return [render_query_row(issue) for issue in rows]

    # -- running the CLI ----------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        """Command line running the fake with this database and this interpreter."""
        return [sys.executable, str(self.executable), "--db", str(self.db_dir), *args]

    def run(
        self,
        *args: str,
        actor: str | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the fake CLI (never raises on a non-zero exit)."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        command = self.argv(*args)
        if actor is not None:
            command[4:4] = ["--actor", actor]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            input=input,
            env=full_env,
            timeout=timeout,
            check=False,
        )

    def run_json(self, *args: str, **kwargs: Any) -> Any:
        """Run with --json and parse stdout; AssertionError (with stderr) on failure."""
        result = self.run(*args, "--json", **kwargs)
        if result.returncode != 0:
            raise AssertionError(
                f"fake bd {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}"
            )
        return json.loads(result.stdout)

    @staticmethod
    def write_wrapper(directory: str | os.PathLike[str], name: str = "bd") -> Path:
        """An executable `bd` shim running the fake with this interpreter (skips pyenv etc.).

        Put `directory` on PATH, or pass the returned path wherever a bd binary is expected.
        """
        target = Path(directory) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            f"#!/bin/sh\nexec '{sys.executable}' '{EXECUTABLE}' \"$@\"\n",
            encoding="utf-8",
        )
        target.chmod(0o755)
        return target


if __name__ == "__main__":
    try:
        status = main()
    except BrokenPipeError:
        status = 1
    sys.exit(status)
