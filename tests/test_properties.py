"""Property-based tests of the three edges where outside text becomes typed values:
bd's JSON (jobs/beads.py), the jobs' environment (jobs/settings.py) and the stack config
(components/config.py). The promise at each edge: valid input parses to what it says, and
anything else fails with the edge's own error and a one-line message — never another
exception, never a traceback.

Examples are kept modest (200 per property, 50 where each example is whole bead rows,
which take hypothesis 10-30 ms each to draw) so the file runs in seconds; no example database
is written (nothing lands in the checkout).
"""

from __future__ import annotations

import json
import string
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from components.config import CONFIG_KEYS, BeadsAutoDispatchArgs, settings_from
from jobs.beads import BdClient, BdError, BdRejected, QueryResult
from jobs.protocol import Status
from jobs.settings import ConfigError, JobSettings, RuntimeSettings, env_name, load_settings
from tests.support.routes import STATUS

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BEAD_ROWS = settings(PROPERTY, max_examples=50)

# -- bd's JSON -----------------------------------------------------------------------------

REQUIRED = ("id", "status", "priority", "created_at", "updated_at")
OPTIONAL_TEXT = ("title", "assignee", "acceptance_criteria", "notes")
KNOWN = {*REQUIRED, *OPTIONAL_TEXT, "metadata", "comments"}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=4,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
# bd prints aware stamps; naive ones must still come out aware (taken as UTC).
moments = st.datetimes(
    datetime(1971, 1, 1), datetime(9998, 12, 31), timezones=st.one_of(st.none(), zones)
)


def stamp(moment: datetime) -> str:
    """bd prints UTC with a Z; other offsets and naive stamps must parse too."""
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if moment.tzinfo is UTC else text


@st.composite
def bead_dicts(draw: st.DrawFn) -> dict[str, Any]:
    bead: dict[str, Any] = {
        "id": draw(st.text(min_size=1)),
        "status": draw(st.sampled_from(["open", "in_progress", "blocked", "closed"]) | st.text()),
        "priority": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "created_at": stamp(draw(moments)),
        "updated_at": stamp(draw(moments)),
    }
    for name in OPTIONAL_TEXT:
        if draw(st.booleans()):
            bead[name] = draw(st.text())
    if draw(st.booleans()):
        bead["metadata"] = draw(st.none() | st.dictionaries(st.text(), json_values, max_size=3))
    # bd adds fields over time (counts, labels, design…): they must never break parsing.
    extra = draw(
        st.dictionaries(
            st.text(max_size=12).filter(lambda k: k not in KNOWN), json_values, max_size=2
        )
    )
    return {**extra, **bead}


def bd_answering(stdout: str, stderr: str = "", returncode: int = 0) -> BdClient:
    def runner(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    return BdClient("bd", Path("/nonexistent"), actor="agent", timeout_seconds=1, runner=runner)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)


@BEAD_ROWS
@given(st.lists(bead_dicts(), max_size=4))
def test_valid_beads_parse_to_what_bd_printed(rows: list[dict[str, Any]]) -> None:
    result = bd_answering(json.dumps(rows, ensure_ascii=False)).queue("agent", Status.OPEN)
    assert result.unreadable == {}
    assert len(result.beads) == len(rows)
    for bead, row in zip(result.beads, rows, strict=True):
        assert (bead.id, bead.status, bead.priority) == (row["id"], row["status"], row["priority"])
        for name in OPTIONAL_TEXT:
            assert getattr(bead, name) == row.get(name, "")
        assert bead.metadata == (row.get("metadata") or {})
        # Naive stamps are taken as UTC, never compared as naive.
        assert bead.created_at.tzinfo is not None and bead.updated_at.tzinfo is not None
        created = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
        assert bead.created_at == (created if created.tzinfo else created.replace(tzinfo=UTC))
        assert bead.has_acceptance_criteria == bool(row.get("acceptance_criteria", "").strip())


@BEAD_ROWS
@given(bead_dicts())
def test_show_returns_the_one_bead(row: dict[str, Any]) -> None:
    bead = bd_answering(json.dumps([row])).show(row["id"])
    assert bead.id == row["id"]


@BEAD_ROWS
@given(
    st.from_regex(r"\A[a-z]{1,8}-[a-z0-9]{3,8}\Z"),
    st.lists(bead_dicts(), max_size=2).map(json.dumps)
    | st.sampled_from(["{}", '{"error": "no issues found"}', "[{}]", '[{"id": 5}]']),
)
def test_show_without_the_bead_is_a_bd_error_never_none(bead_id: str, stdout: str) -> None:
    # bd 1.0.2 answers "no issues found" for any failed lookup: it never proves the bead gone.
    assume(bead_id not in stdout)
    with pytest.raises(BdError) as caught:
        bd_answering(stdout).show(bead_id)
    assert_one_line(str(caught.value))
    assert bead_id in str(caught.value)


comment_dicts = st.fixed_dictionaries(
    {"text": st.text(), "author": st.text(), "created_at": moments.map(stamp)},
    optional={"id": st.text(), "issue_id": st.text()},
)


@BEAD_ROWS
@given(bead_dicts(), st.lists(comment_dicts, max_size=4))
def test_last_activity_is_the_latest_update_or_comment(
    row: dict[str, Any], comments: list[dict[str, Any]]
) -> None:
    bead = bd_answering(json.dumps([{**row, "comments": comments}])).show(row["id"])
    assert [c.text for c in bead.comments] == [c["text"] for c in comments]
    stamps = [bead.updated_at, *(c.created_at for c in bead.comments)]
    assert all(moment.tzinfo is not None for moment in stamps)
    assert bead.last_activity == max(stamps)
    assert bead.last_activity >= bead.updated_at


WRONG_TYPES: dict[str, list[Any]] = {
    "id": [None, 5, [], {}, ""],
    "status": [None, 5, [], {}],
    "priority": [None, "high", [], {}, 1.5, "1.5"],
    "created_at": [None, "yesterday", [], {}, "2024-13-01T00:00:00Z"],
    "updated_at": [None, "soon", [], "2024-02-30T00:00:00Z"],
    "title": [None, 5, [], {}],
    "assignee": [None, 5, ["agent"]],
    "acceptance_criteria": [None, 5, {}],
    "notes": [None, 5, ["a", "b"]],
    "metadata": [[], ["x"], "x", 5, True],
    "comments": [5, "x", {}, [5], [{"text": "no date"}], [{"created_at": "soon"}]],
}


@st.composite
def broken_rows(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, int]:
    """Good rows with one bad row among them, the field that makes it bad, and its index."""
    rows = draw(st.lists(bead_dicts(), min_size=1, max_size=3))
    index = draw(st.integers(0, len(rows) - 1))
    victim = rows[index]
    field = draw(st.sampled_from(sorted(WRONG_TYPES)))
    if field in REQUIRED and draw(st.booleans()):
        del victim[field]
    else:
        victim[field] = draw(st.sampled_from(WRONG_TYPES[field]))
    return rows, field, index


@BEAD_ROWS
@given(broken_rows())
def test_a_bead_with_a_missing_or_wrong_typed_field_is_reported_and_the_rest_parse(
    case: tuple[list[dict[str, Any]], str, int],
) -> None:
    rows, field, index = case
    result = bd_answering(json.dumps(rows)).queue("agent", Status.OPEN)
    # One bad row must not hide the others.
    assert [bead.id for bead in result.beads] == [
        row["id"] for position, row in enumerate(rows) if position != index
    ]
    victim_id = rows[index].get("id")
    key = victim_id if isinstance(victim_id, str) and victim_id else f"#{index}"
    assert list(result.unreadable) == [key]
    reason = result.unreadable[key]
    assert_one_line(reason)
    assert reason.startswith(field), reason


def row_key(row: Any, index: int) -> str:
    """How a row is known in QueryResult: its id when that is a non-empty string, else #index."""
    bead_id = row.get("id") if isinstance(row, dict) else None
    return bead_id if isinstance(bead_id, str) and bead_id else f"#{index}"


def assert_every_row_accounted_for(payload: list[Any], result: QueryResult) -> None:
    """Each row bd printed is a bead (with the id bd printed, in bd's order) or unreadable."""
    keys = [row_key(row, index) for index, row in enumerate(payload)]
    parsed = [bead.id for bead in result.beads]
    assert set(parsed) | set(result.unreadable) == set(keys)
    remaining = iter(keys)
    assert all(bead_id in remaining for bead_id in parsed), (parsed, keys)  # a subsequence
    assert len(parsed) <= len(payload)
    for reason in result.unreadable.values():
        assert_one_line(reason)


@BEAD_ROWS
@given(json_values | st.lists(bead_dicts() | json_values, max_size=4))
def test_any_json_document_parses_or_is_a_bd_error(payload: Any) -> None:
    client = bd_answering(json.dumps(payload))
    try:
        result = client.queue("agent", Status.OPEN)
    except BdError as exc:
        assert_one_line(str(exc))
        assert not isinstance(payload, list), "a JSON array is always rows, never an error"
    else:
        assert isinstance(payload, list)
        assert_every_row_accounted_for(payload, result)


@BEAD_ROWS
@given(st.text() | st.lists(bead_dicts(), max_size=2).map(lambda r: json.dumps(r)[:-1]))
def test_any_text_on_stdout_parses_or_is_a_bd_error(stdout: str) -> None:
    try:
        result = bd_answering(stdout).queue("agent", Status.OPEN)
    except BdError as exc:
        assert_one_line(str(exc))
    else:
        # Only a JSON array (or nothing at all: bd's "no rows") gets this far.
        payload = json.loads(stdout) if stdout.strip() else []
        assert isinstance(payload, list)
        assert_every_row_accounted_for(payload, result)


@PROPERTY
@given(st.text(), st.text(), st.integers(min_value=1, max_value=255))
def test_a_failing_bd_is_a_short_one_line_bd_error(stdout: str, stderr: str, code: int) -> None:
    with pytest.raises(BdError) as caught:
        bd_answering(stdout, stderr, code).update("tb-1", status=Status.OPEN)
    message = str(caught.value)
    assert_one_line(message)
    assert len(message) < 400  # bd's text is quoted as an excerpt, never wholesale
    if not isinstance(caught.value, BdRejected):
        assert message.startswith(f"bd update exited {code}: ")


@pytest.mark.parametrize(
    "notes",
    [
        "x" * 5_000_000,  # a bead an agent noted on for a long time
        "\n".join(f"note {i}: ✓ 完了 🚀 مرحبا \u202e" for i in range(20_000)),
        "\x00\x01\x1f control characters survive a JSON round trip",
    ],
    ids=["5MB", "unicode-lines", "control-chars"],
)
def test_huge_and_unicode_notes_parse_whole(notes: str) -> None:
    row = {
        "id": "tb-ü/../ \u200b",
        "status": "open",
        "priority": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "notes": notes,
    }
    [bead] = bd_answering(json.dumps([row], ensure_ascii=False)).queue("agent", Status.OPEN).beads
    assert bead.notes == notes and bead.id == row["id"]


# -- the jobs' environment -------------------------------------------------------------------

ENV_NAMES = sorted(env_name(name) for name in JobSettings.model_fields)
noisy_text = st.text(string.printable + "äß✓\u00a0\u2028", max_size=30) | st.text(max_size=30)


@PROPERTY
@given(st.sampled_from(ENV_NAMES), noisy_text)
def test_one_env_var_parses_or_names_itself_in_one_line(name: str, value: str) -> None:
    try:
        load_settings({name: value})
    except ConfigError as exc:
        message = str(exc)
        assert_one_line(message)
        assert message.startswith(f"{name} "), message


@PROPERTY
@given(st.dictionaries(st.sampled_from(ENV_NAMES), noisy_text, max_size=6))
def test_any_environment_is_settings_or_one_config_error(environ: dict[str, str]) -> None:
    try:
        result = load_settings(environ)
    except ConfigError as exc:
        message = str(exc)
        assert_one_line(message)
        # The first bad variable, in the order the settings declare them, is the one named.
        named = message.split(" ", 1)[0]
        assert named in environ, message
        with pytest.raises(ConfigError):
            load_settings({named: environ[named]})
    else:
        assert isinstance(result, JobSettings)
        # Every variable set to something other than blanks was read, not ignored.
        for name, value in environ.items():
            if value.strip():
                assert result.model_fields_set >= {name.lower()}, name


BOOLEAN_WORDS = {"true": True, "FALSE": False, " yes ": True, "0": False, "on": True, "off": False}
valid_env = st.fixed_dictionaries(
    {},
    optional={
        env_name("beadboard_url"): st.sampled_from(
            ["http://beadboard", "https://bb.example:8443/", " http://10.0.0.1/base "]
        ),
        env_name("agent_assignee"): st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,20}\Z").filter(
            lambda name: name.lower() not in ("none", "null")  # bd reads these as "unassigned"
        ),
        env_name("reaper_threshold_minutes"): st.integers(1, 10_000).map(str),
        env_name("max_dispatch_attempts"): st.integers(1, 100).map(str),
        env_name("dispatcher_enabled"): st.sampled_from(sorted(BOOLEAN_WORDS)),
        env_name("http_timeout_seconds"): st.integers(1, 600).map(str),
        env_name("bd_timeout_seconds"): st.integers(1, 3600).map(str),
        env_name("dispatcher_window_seconds"): st.integers(0, 86400).map(str),
        env_name("poll_interval_seconds"): st.integers(1, 3600).map(str),
        env_name("max_in_flight"): st.integers(1, 1000).map(lambda n: f" {n} "),
        env_name("bd_bin"): st.sampled_from(["bd", "/usr/local/bin/bd"]),
    },
)


@PROPERTY
@given(valid_env)
def test_valid_environments_load_to_the_values_given(environ: dict[str, str]) -> None:
    loaded = load_settings(environ)
    for field in JobSettings.model_fields:
        name = env_name(field)
        if name not in environ:
            continue
        value = getattr(loaded, field)
        raw = environ[name].strip()
        if field == "dispatcher_enabled":
            assert value is BOOLEAN_WORDS[environ[name]]
        elif field == "beadboard_url":
            assert value == raw.rstrip("/")
        elif isinstance(value, int):
            assert value == int(raw)
        else:
            assert value == raw
    # The runtime ConfigMap carries them as text that reads back to the same values.
    carried = load_settings(loaded.as_env())
    for field in RuntimeSettings.model_fields:
        assert getattr(carried, field) == getattr(loaded, field), field


url_hosts = st.text(
    st.characters(codec="ascii", exclude_characters="/:", exclude_categories=["Zs"]),
    min_size=1,
    max_size=20,
)


@PROPERTY
@example("http", "beadboard\x7f", None)
@example("http", "[]", 80)
@example("https", "bead.\u3002board", None)
@given(st.sampled_from(["http", "https"]), url_hosts, st.none() | st.integers(1, 65535))
def test_an_accepted_url_is_one_httpx_can_request(scheme: str, host: str, port: int | None) -> None:
    url = f"{scheme}://{host}" + (f":{port}" if port else "")
    try:
        loaded = load_settings({env_name("beadboard_url"): url})
    except ConfigError as exc:
        assert_one_line(str(exc))
        return
    try:
        httpx.Request("GET", loaded.beadboard_url + STATUS)
    except httpx.InvalidURL as exc:
        # Not an httpx.HTTPError: in the dispatcher it escapes every handler.
        raise AssertionError(f"accepted {url!r}, which httpx rejects: {exc}") from None


# -- the stack config ------------------------------------------------------------------------

KEY_NAMES = [key.name for key in CONFIG_KEYS]
# A bad value here can surface as the deadline/window rule, which names one of these.
TIMING_KEYS = {
    "dispatcherSchedule",
    "dispatcherDeadlineSeconds",
    "dispatcherWindowSeconds",
    "pollIntervalSeconds",
}


@PROPERTY
@given(st.sampled_from(KEY_NAMES), noisy_text)
def test_one_config_value_is_valid_or_one_line_naming_its_key(key: str, value: str) -> None:
    try:
        result = settings_from({key: value})
    except ConfigError as exc:
        message = str(exc)
        assert_one_line(message)
        named = {k for k in KEY_NAMES if f"config key {k!r}" in message}
        expected = TIMING_KEYS if key in TIMING_KEYS else {key}
        assert named and named <= expected, message
    else:
        assert isinstance(result, BeadsAutoDispatchArgs)


@PROPERTY
@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in KEY_NAMES), noisy_text)
def test_an_unknown_config_key_is_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({key: value})
    assert str(caught.value) == f"unknown config key {key!r}"


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, str]:
    window = draw(st.sampled_from([0, 10, 30]))
    poll = draw(st.integers(1, 10))
    needed = window + poll + 30 if window else 30
    every = draw(st.sampled_from([m for m in (1, 2, 5, 10, 15) if m * 60 > needed]))
    deadline = draw(st.integers(needed, every * 60 - 1))
    config = {
        "dispatcherEnabled": draw(st.sampled_from(["true", "false", "True", "no"])),
        "namespace": draw(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")),
        "image": draw(st.sampled_from(["claude-agent-service:latest", "reg.io/a/b@sha256:ab"])),
        "dispatcherSchedule": f"*/{every} * * * *",
        "dispatcherDeadlineSeconds": str(deadline),
        "dispatcherWindowSeconds": str(window),
        "pollIntervalSeconds": str(poll),
        "reaperThresholdMinutes": str(draw(st.integers(1, 7 * 24 * 60))),
        "maxDispatchAttempts": str(draw(st.integers(1, 100))),
        "doltPort": str(draw(st.integers(1, 65535))),
        "agentHealthUrl": draw(st.sampled_from(["", "http://agent:8080/health"])),
        "maxInFlight": f" {draw(st.integers(1, 1000))} ",
    }
    # The timing keys only make sense together (the deadline must fit the schedule).
    keys = draw(st.sets(st.sampled_from(sorted(set(config) - TIMING_KEYS))))
    if draw(st.booleans()):
        keys |= TIMING_KEYS
    return {key: config[key] for key in keys}


@PROPERTY
@given(valid_configs())
def test_valid_config_strings_give_deploy_settings(config: dict[str, str]) -> None:
    result = settings_from(config)
    assert isinstance(result, BeadsAutoDispatchArgs)
    if "doltPort" in config:
        assert result.dolt_port == int(config["doltPort"])
    if "namespace" in config:
        assert result.namespace == config["namespace"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("namespace", "beads-server\n"),
        ("image", "claude-agent-service:latest\n"),
        ("imagePullSecret", "registry-credentials\n"),
        ("doltHost", "dolt.beads-server.svc.cluster.local\n"),
        ("doltPasswordSecretName", "dolt\n"),
        ("doltPasswordSecretKey", "password\n"),
        ("agentAssignee", "agent\n"),
    ],
)
def test_a_trailing_newline_never_reaches_a_name(key: str, value: str) -> None:
    # `pulumi config set key "$(cmd)"` style values: the newline is trimmed, never rendered.
    [field] = [config.field for config in CONFIG_KEYS if config.name == key]
    assert getattr(settings_from({key: value}), field) == value.strip()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("namespace", "beads server"),
        ("image", "claude agent"),
        ("imagePullSecret", "Registry_Credentials"),
        ("doltHost", "dolt\nhost"),
        ("doltPasswordSecretName", "dolt/x"),
        ("doltPasswordSecretKey", "pass word"),
        ("agentAssignee", "agent\nx"),
    ],
)
def test_a_name_with_a_space_or_newline_inside_is_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({key: value})
    assert str(caught.value).startswith(f"config key {key!r}: ")
    assert_one_line(str(caught.value))
