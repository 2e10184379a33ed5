"""Which database bd opens for BEADS_DB, and how: bd 1.0.2's own rules, followed here.

The dispatch lock must guard the database bd writes, not the path the jobs were given. bd
maps a `--db` directory without metadata.json to the `.beads` beside or above it, reads
metadata.json's keys and `dolt_mode` case-insensitively, and lets env vars and a
`dolt-server.port` file override the file. `resolve()` follows those rules (bd 1.0.2:
cmd/bd/main.go `resolveCommandBeadsDir`, internal/configfile, internal/doltserver
`DefaultConfig`, internal/storage/dolt `applyConfigDefaults`); each is checked against
`bd context --json` in tests/integration/test_database_contract.py.

What bd would read that is not modelled here (a port or shared-server setting in a
config.yaml, a redirect, a `.env` naming a Dolt setting, a mode or value bd would
silently ignore) is refused with a ConfigError: a run that cannot tell which database bd
opens must not guess a lock for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jobs.settings import ConfigError, env_name

METADATA_FILE = "metadata.json"
LEGACY_CONFIG_FILE = "config.json"  # bd migrates it to metadata.json on first use
PORT_FILE = "dolt-server.port"
REDIRECT_FILE = "redirect"

# bd's defaults (internal/configfile, internal/doltserver at v1.0.2).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DATABASE = "beads"
DEFAULT_USER = "root"
SHARED_SERVER_PORT = 3308

# The env vars bd reads for where its database is; `.env` files naming one are refused.
SERVER_MODE_ENV = "BEADS_DOLT_SERVER_MODE"
SHARED_SERVER_ENV = "BEADS_DOLT_SHARED_SERVER"
SHARED_SERVER_DIR_ENV = "BEADS_SHARED_SERVER_DIR"
HOST_ENV = "BEADS_DOLT_SERVER_HOST"
PORT_ENV = "BEADS_DOLT_SERVER_PORT"
LEGACY_PORT_ENV = "BEADS_DOLT_PORT"
DATABASE_ENV = "BEADS_DOLT_SERVER_DATABASE"
USER_ENV = "BEADS_DOLT_SERVER_USER"
TLS_ENV = "BEADS_DOLT_SERVER_TLS"
DATA_DIR_ENV = "BEADS_DOLT_DATA_DIR"
BEADS_DIR_ENV = "BEADS_DIR"
# config.yaml keys bd also takes from env (viper, prefix BD_): not modelled, refused.
YAML_ENV = ("BD_DOLT_PORT", "BD_DOLT_SHARED_SERVER")
STEERING_ENV = (
    SERVER_MODE_ENV,
    SHARED_SERVER_ENV,
    SHARED_SERVER_DIR_ENV,
    HOST_ENV,
    PORT_ENV,
    LEGACY_PORT_ENV,
    DATABASE_ENV,
    USER_ENV,
    TLS_ENV,
    DATA_DIR_ENV,
    *YAML_ENV,
)

# What bd says when it goes on without a readable metadata.json.
_BD_FAILS = "bd would fail with 'database name must not be empty'"


@dataclass(frozen=True)
class DoltServer:
    host: str
    port: int
    user: str
    tls: bool


@dataclass(frozen=True)
class Database:
    """The database bd opens: `dir` is the beads dir whose metadata.json it reads (and
    where embedded mode keeps its data, in `embeddeddolt/`); `name` is the SQL database."""

    dir: Path
    name: str
    server: DoltServer | None  # None: embedded mode, bd runs Dolt in its own process

    @property
    def mode(self) -> Literal["embedded", "server"]:
        return "embedded" if self.server is None else "server"

    @property
    def metadata_file(self) -> Path:
        return self.dir / METADATA_FILE


# -- metadata.json, read the way Go's encoding/json reads it into bd's Config -------------

# bd 1.0.2's configfile.Config: JSON name -> Go type. Other keys are ignored by bd.
_FIELD_TYPES: dict[str, type] = {
    "database": str,
    "backend": str,
    "deletions_retention_days": int,
    "dolt_mode": str,
    "dolt_server_host": str,
    "dolt_server_port": int,
    "dolt_server_user": str,
    "dolt_database": str,
    "dolt_server_tls": bool,
    "dolt_data_dir": str,
    "dolt_remotesapi_port": int,
    "project_id": str,
    "global_dolt_database": str,
    "stale_closed_issues_days": int,
    "last_bd_version": str,
}
_GO_NAMES = {int: "a whole number", str: "a string", bool: "true or false"}
_INT64 = range(-(2**63), 2**63)
# Non-ASCII letters Go's case folding turns into ASCII ones (Kelvin sign, long s, dotted
# and dotless i): "doltſerver_port" is dolt_server_port to bd.
_GO_FOLD = str.maketrans({"\u212a": "K", "\u017f": "S", "\u0130": "I", "\u0131": "I"})


class _FloatLiteral(str):
    """A JSON number with a fraction or exponent: Go will not put it in an int."""


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept (Go: last wins)."""


def _go_fold(key: str) -> str:
    folded = key.translate(_GO_FOLD)
    return "".join(c.upper() if c.isascii() else c for c in folded)


_FIELD_BY_FOLD = {_go_fold(name): name for name in _FIELD_TYPES}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata.json as bd 1.0.2 reads it: each known field by its Go type, keys matched
    case-insensitively, the last of duplicate keys winning, unknown keys ignored.

    Raises ConfigError naming the file and the field bd cannot read.
    """
    try:
        text = path.read_bytes().decode("utf-8")
        document = json.loads(
            text,
            object_pairs_hook=_Object,
            parse_float=_FloatLiteral,
            parse_constant=_reject_constant,
        )
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path}: not valid JSON ({exc}); {_BD_FAILS}") from None
    if document is None:
        return {}  # Go decodes `null` into an untouched Config
    if not isinstance(document, _Object):
        raise ConfigError(f"{path}: must be a JSON object; {_BD_FAILS}")
    fields: dict[str, Any] = {}
    for key, value in document:
        name = _FIELD_BY_FOLD.get(_go_fold(key))
        if name is None:
            continue
        if value is not None:
            _check_type(path, key, value, _FIELD_TYPES[name])
        fields[name] = value
    return {name: value for name, value in fields.items() if value is not None}


def _check_type(path: Path, key: str, value: Any, kind: type) -> None:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value in _INT64
    else:
        ok = isinstance(value, str) and not isinstance(value, _FloatLiteral)
    if not ok:
        shown = json.dumps(_plain(value)) if not isinstance(value, _FloatLiteral) else value
        raise ConfigError(f"{path}: {key} must be {_GO_NAMES[kind]}, got {shown}; {_BD_FAILS}")


def _plain(value: Any) -> Any:
    if isinstance(value, _Object):
        return {key: _plain(item) for key, item in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# -- which beads dir bd uses for `--db PATH` -----------------------------------------------


def _normalized(path: Path) -> str:
    """bd's PathsEqual: symlinks resolved when the path exists, else just absolute."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return os.path.abspath(path)


def _loadable(beads_dir: Path) -> dict[str, Any] | None:
    """A dir's metadata when bd could load it, else None (bd skips such a candidate)."""
    if not (beads_dir / METADATA_FILE).is_file():
        if (beads_dir / LEGACY_CONFIG_FILE).is_file():
            raise ConfigError(
                f"{beads_dir / LEGACY_CONFIG_FILE}: bd would migrate this legacy file to "
                f"{METADATA_FILE} on its next run; run any bd command once, then start again"
            )
        return None
    try:
        return read_metadata(beads_dir / METADATA_FILE)
    except ConfigError:
        return None


def _data_path(beads_dir: Path, metadata: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """bd's Config.DatabasePath: where a beads dir says its Dolt data lives."""
    custom = environ.get(DATA_DIR_ENV) or str(metadata.get("dolt_data_dir") or "")
    if custom:
        return _normalized(beads_dir / custom)  # an absolute custom path replaces the dir
    database = str(metadata.get("database") or "")
    if os.path.isabs(database):
        return _normalized(Path(database))
    return _normalized(beads_dir / "dolt")


def _ancestors(path: Path) -> Iterator[Path]:
    """`path` and its parents, short of the filesystem root (bd never looks at /.beads)."""
    while path != path.parent:
        yield path
        path = path.parent


def beads_dir_for(db_path: Path, environ: Mapping[str, str], cwd: Path | None = None) -> Path:
    """The beads dir bd 1.0.2 uses for `bd --db <db_path>` (absolute), whether or not
    `db_path` exists: bd's `resolveCommandBeadsDir`, step by step."""
    given = Path(os.path.abspath(db_path))
    actual = Path(_normalized(given))
    # 1. <x>/.beads/<anything> names the .beads dir itself, when it holds metadata.json.
    for parent in (given.parent, actual.parent):
        if parent.name == ".beads" and (parent / METADATA_FILE).exists():
            return parent
    # 2. A candidate whose metadata bd can load and that is the path, or whose data is.
    wanted = {_normalized(given), _normalized(actual)}
    for key, candidate in _candidates(given, actual, environ, cwd).items():
        metadata = _loadable(candidate)
        if metadata is not None and (
            key in wanted or _data_path(candidate, metadata, environ) in wanted
        ):
            return candidate
    # 3. The nearest `.beads` directory beside the path or above it.
    for directory in _ancestors(given.parent):
        if (directory / ".beads").is_dir():
            return directory / ".beads"
    # 4. The path's parent (where bd then finds no metadata.json and fails).
    return given.parent


def _candidates(
    given: Path, actual: Path, environ: Mapping[str, str], cwd: Path | None
) -> dict[str, Path]:
    """bd's candidate beads dirs for a --db path, in its order, keyed as bd compares them."""
    candidates: dict[str, Path] = {}

    def add(path: Path) -> None:
        candidates.setdefault(_normalized(path), path)

    for path in (given, actual):
        if path.is_dir():
            add(path)
    add(given.parent)
    add(actual.parent)
    for start in (given.parent, actual.parent):
        for directory in _ancestors(start):
            add(directory / ".beads")
            if directory.name == ".beads":
                add(directory)
    for found in _discovered_beads_dirs(environ, cwd):
        add(found)
    return candidates


def _discovered_beads_dirs(environ: Mapping[str, str], cwd: Path | None) -> Iterator[Path]:
    """Where bd's own discovery (BEADS_DIR, then the working directory's ancestors) looks
    for a beads dir; candidates only when their data dir is the path given."""
    if beads_dir := environ.get(BEADS_DIR_ENV):
        yield Path(os.path.abspath(beads_dir))
    for directory in _ancestors(cwd or Path.cwd()):
        if (directory / ".beads").is_dir():
            yield directory / ".beads"
            return


# -- the whole answer ------------------------------------------------------------------------


def resolve(
    beads_db: Path, environ: Mapping[str, str], *, cwd: Path | None = None, home: Path | None = None
) -> Database:
    """The database bd opens for BEADS_DB, by bd 1.0.2's precedence; ConfigError (one line)
    when BEADS_DB does not exist, bd could not read its config, or bd would read something
    this module does not model."""
    variable = env_name("beads_db")
    if not beads_db.is_absolute():
        raise ConfigError(f"{variable} {beads_db}: must be an absolute path")
    own_metadata = beads_db / METADATA_FILE
    if beads_db.is_dir() and own_metadata.is_file():
        read_metadata(own_metadata)  # bd would skip it and look elsewhere: say why instead
    beads_dir = beads_dir_for(beads_db, environ, cwd)
    if not beads_db.exists():
        raise ConfigError(
            f"{variable} {beads_db}: no such directory (bd would use {beads_dir}; if that "
            f"is the database meant, set {variable} to it)"
        )
    metadata_path = beads_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise ConfigError(
            f"{variable} {beads_db}: bd would read {metadata_path}, which does not exist (no "
            f"{METADATA_FILE} in {variable}, nor in a .beads directory beside or above it); "
            f"{_BD_FAILS}"
        )
    metadata = read_metadata(metadata_path)
    _refuse_unmodelled(beads_dir, environ, cwd or Path.cwd(), home or _home(environ))
    name = environ.get(DATABASE_ENV) or str(metadata.get("dolt_database") or DEFAULT_DATABASE)
    if not _server_mode(metadata, metadata_path, environ):
        return Database(dir=beads_dir, name=name, server=None)
    server = DoltServer(
        host=environ.get(HOST_ENV) or str(metadata.get("dolt_server_host") or DEFAULT_HOST),
        port=_port(beads_dir, metadata, metadata_path, environ, home or _home(environ)),
        user=environ.get(USER_ENV) or str(metadata.get("dolt_server_user") or DEFAULT_USER),
        tls=_tls(metadata, environ),
    )
    return Database(dir=beads_dir, name=name, server=server)


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HOME") or Path.home())


def _shared_server(environ: Mapping[str, str]) -> bool:
    value = environ.get(SHARED_SERVER_ENV, "")
    if value == "1" or value.lower() == "true":
        return True
    if value in ("", "0") or value.lower() == "false":
        return False
    raise ConfigError(
        f"{SHARED_SERVER_ENV}={value!r}: bd 1.0.2 reads only '1' or 'true' as on and "
        "ignores anything else; set it to 1 or unset it"
    )


def _server_mode(metadata: Mapping[str, Any], path: Path, environ: Mapping[str, str]) -> bool:
    forced = environ.get(SERVER_MODE_ENV, "")
    if forced not in ("", "1"):
        raise ConfigError(
            f"{SERVER_MODE_ENV}={forced!r}: bd 1.0.2 reads only '1' (server mode) and "
            "ignores anything else; set it to 1 or unset it"
        )
    shared = _shared_server(environ)
    mode = str(metadata.get("dolt_mode") or "")
    if mode.lower() not in ("", "embedded", "server"):
        raise ConfigError(
            f"{path}: dolt_mode {mode!r} is neither 'server' nor 'embedded'; bd 1.0.2 would "
            "run embedded without saying so"
        )
    return forced == "1" or shared or mode.lower() == "server"


def _go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi: an optional sign and decimal digits, nothing else."""
    if re.fullmatch(r"[+-]?[0-9]+", text) is None or int(text) not in _INT64:
        return None
    return int(text)


def _port(
    beads_dir: Path,
    metadata: Mapping[str, Any],
    metadata_path: Path,
    environ: Mapping[str, str],
    home: Path,
) -> int:
    """bd's port: the env var, then the port file, then metadata.json (then 3308 for a
    shared server); BEADS_DOLT_PORT only when none of those gave one."""
    port, source = _port_and_source(beads_dir, metadata, metadata_path, environ, home)
    if port == 0 and source == metadata_path.name:
        raise ConfigError(
            f"{metadata_path}: server mode, but no dolt_server_port (nor {PORT_ENV} or "
            f"{PORT_FILE}); bd 1.0.2 would start a Dolt server of its own instead of using yours"
        )
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"{source}: port {port} is not a TCP port; bd 1.0.2 would start a Dolt server "
            "of its own instead of using yours"
        )
    return port


def _port_and_source(
    beads_dir: Path,
    metadata: Mapping[str, Any],
    metadata_path: Path,
    environ: Mapping[str, str],
    home: Path,
) -> tuple[int, str]:
    if text := environ.get(PORT_ENV, ""):
        port = _go_atoi(text)
        if port is None:
            raise ConfigError(f"{PORT_ENV}={text!r}: not a number; bd 1.0.2 would ignore it")
        return port, PORT_ENV
    server_dir = beads_dir
    if _shared_server(environ):
        # A shared server's port file and metadata.json are the shared dir's, not the repo's.
        server_dir = Path(environ.get(SHARED_SERVER_DIR_ENV) or home / ".beads" / "shared-server")
        metadata = _loadable(server_dir) or {}
        metadata_path = server_dir / METADATA_FILE
    port_file = server_dir / PORT_FILE
    if port_file.exists():
        content = port_file.read_text(encoding="utf-8", errors="replace").strip()
        port = _go_atoi(content)
        if port is None or port <= 0:
            raise ConfigError(f"{port_file}: {content!r} is not a port; bd 1.0.2 would ignore it")
        return port, str(port_file)
    configured = int(metadata.get("dolt_server_port") or 0)
    if configured > 0:
        return configured, f"{metadata_path}: dolt_server_port"
    if _shared_server(environ):
        return SHARED_SERVER_PORT, SHARED_SERVER_ENV
    if text := environ.get(LEGACY_PORT_ENV, ""):
        raise ConfigError(
            f"{LEGACY_PORT_ENV}={text!r}: bd 1.0.2 reads it only as a last resort and "
            f"`bd context` does not show it; set {PORT_ENV} instead"
        )
    return 0, metadata_path.name


def _tls(metadata: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    if text := environ.get(TLS_ENV, ""):
        return text == "1" or text.lower() == "true"
    return bool(metadata.get("dolt_server_tls"))


# -- what bd would read that is not modelled here ---------------------------------------------

# Keys of bd's config.yaml that would move the server (viper matches keys case-insensitively).
_YAML_STEERING = re.compile(r"(^|[\s.{,])(port|shared[-_]server)\s*:", re.IGNORECASE)
_STEERING_NAMES = re.compile("|".join(re.escape(name) for name in STEERING_ENV))


def _refuse_unmodelled(beads_dir: Path, environ: Mapping[str, str], cwd: Path, home: Path) -> None:
    for name in YAML_ENV:
        if environ.get(name):
            raise ConfigError(
                f"{name} is set: bd 1.0.2 would take it as its config.yaml "
                f"{'dolt.port' if name.endswith('PORT') else 'dolt.shared-server'}, which "
                "this run does not model; unset it (use BEADS_DOLT_SERVER_PORT / "
                "BEADS_DOLT_SHARED_SERVER)"
            )
    beads_dirs = [beads_dir, *_cwd_beads_dirs(cwd)]
    if other := environ.get(BEADS_DIR_ENV):
        beads_dirs.append(Path(other))
    for directory in beads_dirs:
        if (directory / REDIRECT_FILE).exists():
            raise ConfigError(
                f"{directory / REDIRECT_FILE}: bd follows redirects in some commands and not "
                "in others; point BEADS_DB at the redirect's target instead"
            )
    configs = [directory / name for directory in beads_dirs for name in _YAML_NAMES]
    configs += [home / ".beads" / "config.yaml", _user_config_dir(environ, home) / "config.yaml"]
    _refuse_matching(configs, _YAML_STEERING.search, "sets a Dolt port or shared server")
    envs = [directory / ".env" for directory in beads_dirs]
    _refuse_matching(envs, _STEERING_NAMES.search, "names a Dolt setting")


_YAML_NAMES = ("config.yaml", "config.local.yaml")


def _refuse_matching(
    files: list[Path], search: Callable[[str], re.Match[str] | None], what: str
) -> None:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.lstrip().startswith("#") or not (found := search(line)):
                continue
            raise ConfigError(
                f"{path}: {what} ({found.group(0).strip()!r}) that bd 1.0.2 would read and "
                "this run does not model; move it to metadata.json or the pod's env"
            )


def _cwd_beads_dirs(cwd: Path) -> list[Path]:
    """Each `.beads` dir from the working directory up: bd reads its config.yaml, `.env`
    and redirect from the first it finds, which depends on git and worktrees."""
    return [d / ".beads" for d in _ancestors(cwd) if (d / ".beads").is_dir()]


def _user_config_dir(environ: Mapping[str, str], home: Path) -> Path:
    return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "bd"


# -- the pod: a writable BEADS_DB made from the mounted metadata.json -------------------------


def provision(beads_db: Path, metadata_file: Path | None) -> None:
    """With BEADS_METADATA_FILE, BEADS_DB is made and the file copied into it (ConfigMap
    mounts are read-only; bd writes beside metadata.json). Without it nothing is created:
    a BEADS_DB that does not exist is a typo, not a database."""
    if metadata_file is None:
        return
    if not metadata_file.is_file():
        raise ConfigError(f"{env_name('beads_metadata_file')} {metadata_file}: no such file")
    try:
        beads_db.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{env_name('beads_db')} {beads_db}: cannot create it ({exc.strerror})"
        ) from None
    try:
        shutil.copyfile(metadata_file, beads_db / METADATA_FILE)
    except OSError as exc:
        raise ConfigError(
            f"{env_name('beads_metadata_file')} {metadata_file}: cannot copy ({exc.strerror})"
        ) from None
