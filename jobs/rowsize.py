"""bd's row limit: a bead past 65,535 bytes, as bd stores it, can no longer be updated.

Every `bd update` (a claim, a status, a note, a metadata edit) records an event whose
`old_value` column (TEXT: 65,535 bytes) holds the whole old row as Go's `json.Marshal`
writes it: the issue's fields and its labels, HTML-escaped (`<`, `>`, `&` are six bytes
each). One byte over, and bd refuses the update; only `bd close` and `bd comments add`
still work (docs/bd-contract.md, "Row limit"; measured in
tests/integration/test_row_limit_real.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# The events table's old_value is a TEXT column.
ROW_LIMIT = 65_535
# Room a claimed bead needs for what the jobs write on it afterwards: the claim and
# failure notes (a dispatch failure quotes BeadBoard's reason), the stage and attempts
# metadata, a reaper note. Comments are rows of their own and need none.
WRITE_MARGIN = 8 * 1024

# The JSON names of bd 1.0.2's types.Issue fields, i.e. what old_value holds. bd loads the
# labels with the old row, not its dependencies or comments.
STORED_FIELDS = frozenset(
    {
        "id", "title", "description", "design", "acceptance_criteria", "notes", "spec_id",
        "status", "priority", "issue_type", "assignee", "owner", "estimated_minutes",
        "created_at", "created_by", "updated_at", "started_at", "closed_at", "close_reason",
        "closed_by_session", "due_at", "defer_until", "external_ref", "source_system",
        "metadata", "compaction_level", "compacted_at", "compacted_at_commit",
        "original_size", "labels", "sender", "ephemeral", "no_history", "wisp_type",
        "pinned", "is_template", "bonded_from", "await_type", "await_id", "timeout",
        "waiters", "source_formula", "source_location", "mol_type", "work_type",
        "event_kind", "actor", "target", "payload",
    }
)  # fmt: skip

# Go writes these control characters as \u00XX (six bytes); \b \f \n \r \t take two.
_SIX_BYTE_CONTROLS = re.compile(r"[\x00-\x07\x0b\x0e-\x1f]")
_TWO_BYTE_ESCAPES = '"\\\b\f\n\r\t'


def stored_size(row: Mapping[str, Any]) -> int:
    """The bytes of `row` (a bead as bd prints it) in old_value: its stored fields only."""
    fields = [(key, value) for key, value in row.items() if key in STORED_FIELDS]
    return json_size(dict(fields))


def json_size(value: Any) -> int:
    """The length of Go's json.Marshal output for `value` (a parsed JSON value)."""
    if isinstance(value, str):
        return _string_size(value)
    if isinstance(value, bool) or value is None:
        return {True: 4, False: 5, None: 4}[value]
    if isinstance(value, int | float):
        # Exact for integers; a float written in unusual notation may differ by a few bytes.
        return len(repr(value))
    if isinstance(value, Mapping):
        items = [_string_size(str(key)) + 1 + json_size(item) for key, item in value.items()]
        return 2 + sum(items) + max(len(items) - 1, 0)
    if isinstance(value, list | tuple):
        return 2 + sum(json_size(item) for item in value) + max(len(value) - 1, 0)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _string_size(text: str) -> int:
    size = 2 + len(text.encode("utf-8", "replace"))
    size += sum(text.count(char) for char in _TWO_BYTE_ESCAPES)
    # json.Marshal escapes HTML: < > & become \u003c \u003e \u0026.
    size += 5 * (text.count("<") + text.count(">") + text.count("&"))
    size += 5 * len(_SIX_BYTE_CONTROLS.findall(text))
    # U+2028 and U+2029 (three bytes in UTF-8) become \u2028 and \u2029.
    return size + 3 * (text.count("\u2028") + text.count("\u2029"))


def too_large(size: int) -> str | None:
    """Why a bead of `size` stored bytes is not claimed, or None when the jobs' writes fit."""
    if size + WRITE_MARGIN <= ROW_LIMIT:
        return None
    return (
        f"too large for bd to update ({size:,} bytes of {ROW_LIMIT:,}); the jobs keep "
        f"{WRITE_MARGIN:,} bytes of room for their own notes. Trim its description or notes, "
        "or close it"
    )
