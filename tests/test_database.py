"""Which database bd opens for BEADS_DB (jobs/database.py), and the lock taken on it.

Each rule here is also checked against the real bd's `bd context --json` in
tests/integration/test_database_contract.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.database import Database, DoltServer, beads_dir_for, read_metadata, resolve
from jobs.lock import LOCK_FILE_NAME, DoltNamedLock, FileLock, lock_on
from jobs.settings import ConfigError

SERVER = {"dolt_mode": "server", "dolt_server_host": "dolt", "dolt_server_port": 3306}


def beads_dir(parent: Path, metadata: dict[str, Any] | str | None = None) -> Path:
    """`parent/.beads` holding a metadata.json (embedded mode unless told)."""
    directory = parent / ".beads"
    directory.mkdir(parents=True)
    text = metadata if isinstance(metadata, str) else json.dumps(metadata or {"backend": "dolt"})
    (directory / "metadata.json").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    beads_dir(root)
    return root


def resolved(path: Path, home: Path, **environ: str) -> Database:
    return resolve(path, {"HOME": str(home), **environ}, cwd=home)


# -- BEADS_DB: the spellings of one database -------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [".beads", "dispatcher-2", "sub/deeper", ".beads/embeddeddolt", ".beads/dolt"],
)
def test_every_existing_spelling_of_a_repo_resolves_to_its_beads_dir(
    repo: Path, tmp_path: Path, spelling: str
) -> None:
    """bd maps a --db dir without metadata.json to the .beads beside or above it."""
    (repo / spelling).mkdir(parents=True, exist_ok=True)
    database = resolved(repo / spelling, tmp_path)
    assert database.dir == repo / ".beads"
    assert lock_on(database, {}).description == f"flock {repo / '.beads' / LOCK_FILE_NAME}"


def test_a_beads_db_path_inside_the_beads_dir_names_it(repo: Path) -> None:
    assert beads_dir_for(repo / ".beads" / "beads.db", {}) == repo / ".beads"


def test_a_dir_holding_metadata_json_is_used_whatever_its_name(tmp_path: Path) -> None:
    pod = tmp_path / "pod-beads"
    pod.mkdir()
    (pod / "metadata.json").write_text("{}", encoding="utf-8")
    assert resolved(pod, tmp_path).dir == pod


def test_a_beads_db_that_does_not_exist_is_refused_and_not_created(
    repo: Path, tmp_path: Path
) -> None:
    typo = repo / "dispatcher-2"
    with pytest.raises(ConfigError, match=r"no such directory \(bd would use .*/repo/\.beads"):
        resolved(typo, tmp_path)
    assert not typo.exists()


def test_no_metadata_json_beside_or_above_is_refused_naming_the_file(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely" / "db"
    lonely.mkdir(parents=True)
    with pytest.raises(ConfigError) as refused:
        resolved(lonely, tmp_path)
    assert f"bd would read {tmp_path / 'lonely' / 'metadata.json'}, which does not exist" in str(
        refused.value
    )
    assert "database name must not be empty" in str(refused.value)


def test_a_relative_beads_db_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BEADS_DB \.beads: must be an absolute path"):
        resolved(Path(".beads"), tmp_path)


# -- metadata.json as Go's encoding/json reads it -------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"dolt_server_port": "3306"}', 'dolt_server_port must be a whole number, got "3306"'),
        ('{"dolt_server_tls": "true"}', 'dolt_server_tls must be true or false, got "true"'),
        ('{"dolt_server_port": 3306.0}', "dolt_server_port must be a whole number, got 3306.0"),
        ('{"DOLT_MODE": 1}', "DOLT_MODE must be a string, got 1"),
        ('{"dolt_database": ["code"]}', 'dolt_database must be a string, got ["code"]'),
        ("[]", "must be a JSON object"),
        ('{"dolt_mode": "server",}', "not valid JSON"),
        ('{"dolt_server_port": NaN}', "not valid JSON"),
    ],
)
def test_metadata_bd_cannot_read_names_the_file_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = beads_dir(tmp_path, text) / "metadata.json"
    with pytest.raises(ConfigError) as refused:
        read_metadata(path)
    assert str(refused.value).startswith(f"{path}: {message}")
    assert str(refused.value).endswith("bd would fail with 'database name must not be empty'")


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ('{"DOLT_MODE": "Server"}', {"dolt_mode": "Server"}),
        ('{"Dolt_Server_Port": 3306, "unknown": [1]}', {"dolt_server_port": 3306}),
        ('{"dolt_database": "a", "DOLT_DATABASE": "b"}', {"dolt_database": "b"}),
        ('{"dolt_\u017ferver_host": "h"}', {"dolt_server_host": "h"}),
        ('{"dolt_database": null}', {}),
        ("null", {}),
    ],
    ids=["upper-key", "mixed-case", "last-wins", "long-s", "null-field", "null"],
)
def test_metadata_keys_match_as_go_matches_them(
    tmp_path: Path, text: str, fields: dict[str, Any]
) -> None:
    assert read_metadata(beads_dir(tmp_path, text) / "metadata.json") == fields


# -- mode and server: env > port file > metadata.json > bd's defaults ------------------------


def server(tmp_path: Path, metadata: dict[str, Any], **environ: str) -> Database:
    return resolved(beads_dir(tmp_path / "repo", metadata), tmp_path, **environ)


@pytest.mark.parametrize("mode", ["server", "Server", "SERVER"])
def test_dolt_mode_is_read_case_insensitively(tmp_path: Path, mode: str) -> None:
    database = server(tmp_path, {**SERVER, "dolt_mode": mode})
    assert database.server == DoltServer(host="dolt", port=3306, user="root", tls=False)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"BEADS_DOLT_SERVER_MODE": "1"}, ("127.0.0.1", 3306, "beads", "root", False)),
        # A shared server's port is the shared dir's (none here: 3308), not the repo's.
        ({"BEADS_DOLT_SHARED_SERVER": "true"}, ("127.0.0.1", 3308, "beads", "root", False)),
        (
            {"BEADS_DOLT_SERVER_MODE": "1", "BEADS_DOLT_SERVER_HOST": "other"},
            ("other", 3306, "beads", "root", False),
        ),
        (
            {"BEADS_DOLT_SERVER_MODE": "1", "BEADS_DOLT_SERVER_PORT": "+4000"},
            ("127.0.0.1", 4000, "beads", "root", False),
        ),
        (
            {"BEADS_DOLT_SERVER_MODE": "1", "BEADS_DOLT_SERVER_DATABASE": "code"},
            ("127.0.0.1", 3306, "code", "root", False),
        ),
        (
            {"BEADS_DOLT_SERVER_MODE": "1", "BEADS_DOLT_SERVER_USER": "beads"},
            ("127.0.0.1", 3306, "beads", "beads", False),
        ),
        (
            {"BEADS_DOLT_SERVER_MODE": "1", "BEADS_DOLT_SERVER_TLS": "TRUE"},
            ("127.0.0.1", 3306, "beads", "root", True),
        ),
    ],
    ids=["server-mode", "shared-server", "host", "port", "database", "user", "tls"],
)
def test_env_overrides_the_file(
    tmp_path: Path, environ: dict[str, str], expected: tuple[str, int, str, str, bool]
) -> None:
    """An embedded-mode metadata.json naming a port: the env alone makes it server mode."""
    database = server(tmp_path, {"dolt_mode": "embedded", "dolt_server_port": 3306}, **environ)
    assert database.server is not None
    got = (database.server.host, database.server.port, database.name, database.server.user)
    assert (*got, database.server.tls) == expected


def test_the_port_file_beats_metadata_and_the_env_beats_both(tmp_path: Path) -> None:
    directory = beads_dir(tmp_path / "repo", SERVER)
    (directory / "dolt-server.port").write_text("4001\n", encoding="utf-8")
    assert resolved(directory, tmp_path).server == DoltServer("dolt", 4001, "root", False)
    with_env = resolved(directory, tmp_path, BEADS_DOLT_SERVER_PORT="4002")
    assert with_env.server is not None and with_env.server.port == 4002


def test_a_shared_server_uses_its_own_port_file_else_3308(tmp_path: Path) -> None:
    metadata = {"dolt_mode": "server"}
    assert server(tmp_path, metadata, BEADS_DOLT_SHARED_SERVER="1").server == DoltServer(
        "127.0.0.1", 3308, "root", False
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "dolt-server.port").write_text("4003", encoding="utf-8")
    database = resolved(
        tmp_path / "repo" / ".beads",
        tmp_path,
        BEADS_DOLT_SHARED_SERVER="1",
        BEADS_SHARED_SERVER_DIR=str(shared),
    )
    assert database.server is not None and database.server.port == 4003


def test_lock_on_a_server_is_a_named_lock_for_the_database_bd_opens(tmp_path: Path) -> None:
    database = server(tmp_path, {**SERVER, "dolt_database": "code", "dolt_server_tls": True})
    lock = lock_on(database, {"BEADS_DOLT_PASSWORD": "pw", "BEADS_DOLT_SERVER_DATABASE": "x"})
    assert isinstance(lock, DoltNamedLock)
    assert (lock.host, lock.port, lock.user, lock.database, lock.name) == (
        "dolt",
        3306,
        "root",
        "code",
        "beads-autodispatch:code",
    )
    assert isinstance(lock_on(server(tmp_path / "2", {}), {}), FileLock)


# -- what bd would read and this run does not model: refused, never a weaker lock ------------


@pytest.mark.parametrize(
    ("metadata", "environ", "message"),
    [
        (SERVER, {"BEADS_DOLT_SERVER_MODE": "true"}, "BEADS_DOLT_SERVER_MODE='true': bd 1.0.2"),
        (SERVER, {"BEADS_DOLT_SHARED_SERVER": "yes"}, "BEADS_DOLT_SHARED_SERVER='yes': bd"),
        ({**SERVER, "dolt_mode": "srever"}, {}, "dolt_mode 'srever' is neither"),
        (SERVER, {"BEADS_DOLT_SERVER_PORT": "33o6"}, "BEADS_DOLT_SERVER_PORT='33o6': not a"),
        (SERVER, {"BEADS_DOLT_SERVER_PORT": "0"}, "BEADS_DOLT_SERVER_PORT: port 0 is not"),
        ({"dolt_mode": "server"}, {}, "server mode, but no dolt_server_port"),
        ({"dolt_mode": "server"}, {"BEADS_DOLT_PORT": "3306"}, "BEADS_DOLT_PORT='3306': bd"),
        (SERVER, {"BD_DOLT_PORT": "3306"}, "BD_DOLT_PORT is set"),
    ],
)
def test_what_bd_would_read_differently_is_refused(
    tmp_path: Path, metadata: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        server(tmp_path, metadata, **environ)


@pytest.mark.parametrize(
    ("where", "text", "message"),
    [
        ("home/.beads/config.yaml", "dolt:\n  port: 3307\n", "sets a Dolt port"),
        ("home/.config/bd/config.yaml", "dolt.shared-server: true\n", "sets a Dolt port"),
        ("repo/.beads/config.yaml", "# dolt.port: 1\nDolt.Port: 3307\n", "sets a Dolt port"),
        ("repo/.beads/.env", "BEADS_DOLT_SERVER_PORT=3307\n", "names a Dolt setting"),
        ("repo/.beads/dolt-server.port", "soon", "'soon' is not a port"),
        ("repo/.beads/redirect", "../elsewhere/.beads\n", "bd follows redirects"),
    ],
)
def test_files_bd_would_read_and_this_run_does_not_model_are_refused(
    tmp_path: Path, where: str, text: str, message: str
) -> None:
    directory = beads_dir(tmp_path / "repo", SERVER)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        resolved(directory, tmp_path / "home")


def test_commented_and_unrelated_config_yaml_lines_are_fine(tmp_path: Path) -> None:
    directory = beads_dir(tmp_path / "repo", SERVER)
    (directory / "config.yaml").write_text(
        "# dolt.port: 3307\nexport.path: issues.jsonl\ndolt.auto-commit: on\n", encoding="utf-8"
    )
    assert resolved(directory, tmp_path).server is not None
