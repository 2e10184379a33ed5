"""The dispatch lock: held by one run at a time, and gone the moment its holder is.

bd 1.0.2 has no conditional write, so no lock kept *in* bd can be made safe: a time-based
"stale" rule either waits forever for a dead holder or takes over from a slow live one.
This lock lives where the holder's death is noticed by the system itself:

- server mode (production): a named lock on the Dolt sql-server (`GET_LOCK`). The server
  drops every named lock of a session when its connection closes, so a killed pod frees
  it without any timer;
- embedded mode (local stack, demo, tests): `flock` on a file beside the database, which
  the kernel drops when the holding process exits.

Either is taken on the database bd really opens (jobs/database.py), whatever spelling of
BEADS_DB a run was given: two spellings of one database take one lock.

One lock per (database, assignee). Dispatchers take it around claim + send, the reaper
around every change it makes, so a reaper holding it knows no live dispatcher *of its
assignee* is between claiming a bead and sending it. Dispatchers of different assignees
need no lock between them: each touches only its assignee's beads, and bd's `--claim`
refuses a bead assigned to someone else (docs/runbook.md, "Several instances"), so
instances sharing a database never wait on each other.
Holders call `ensure_held()` before every bead write and stop at once when it fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from jobs.database import Database
from jobs.settings import RuntimeSettings

LOCK_FILE_NAME = "beads-autodispatch.lock"
# MySQL/Dolt caps lock names at 64 characters.
_LOCK_NAME_PREFIX = "beads-autodispatch:"
_MAX_LOCK_NAME = 64
# Its lock keeps the name it had before instances: a run of the old code still going during
# an upgrade and a new one then exclude each other.
DEFAULT_ASSIGNEE: str = RuntimeSettings.model_fields["agent_assignee"].default


def lock_name(database: str, assignee: str = DEFAULT_ASSIGNEE) -> str:
    """The named lock of one assignee's queue in one database."""
    if assignee == DEFAULT_ASSIGNEE:
        name = _LOCK_NAME_PREFIX + database
    else:
        name = f"{_LOCK_NAME_PREFIX}{database}:{assignee}"
    if len(name) <= _MAX_LOCK_NAME:
        return name
    # Cut short, two long names could end up one lock: a digest keeps them apart.
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: _MAX_LOCK_NAME - len(digest) - 1]}~{digest}"


def lock_file_name(assignee: str = DEFAULT_ASSIGNEE) -> str:
    """The flock file of one assignee's queue, beside the database."""
    if assignee == DEFAULT_ASSIGNEE:
        return LOCK_FILE_NAME
    return f"beads-autodispatch.{assignee}.lock"


# How often a waiting holder asks again; GET_LOCK with a timeout would block a Dolt worker.
_RETRY_SECONDS = 0.25
PASSWORD_ENV = "BEADS_DOLT_PASSWORD"  # noqa: S105 (the variable name, not a password)
# A Dolt server that stops answering must not hang a run past its deadline.
_SQL_TIMEOUT_SECONDS = 10


class LockError(Exception):
    """The lock service could not be asked (Dolt unreachable, the lock file unwritable)."""


class LockLost(LockError):
    """This run no longer holds the lock it took: it must not write another bead."""


class DispatchLock(Protocol):
    @property
    def description(self) -> str: ...

    def try_acquire(self, wait_seconds: float = 0.0) -> bool:
        """True once held; False if another run still holds it after `wait_seconds`."""
        ...

    def held(self) -> bool:
        """True while this run still holds the lock (asks the lock service, not a flag)."""
        ...

    def release(self) -> None: ...


def ensure_held(lock: DispatchLock) -> None:
    try:
        still = lock.held()
    except LockError as exc:
        raise LockLost(f"cannot confirm the dispatch lock ({exc})") from None
    if not still:
        raise LockLost(f"the dispatch lock ({lock.description}) is no longer held by this run")


class FileLock:
    """`flock` on `<beads dir>/beads-autodispatch.lock`: one holder per open file description."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def description(self) -> str:
        return f"flock {self.path}"

    def try_acquire(self, wait_seconds: float = 0.0) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(_RETRY_SECONDS)
                continue
            except OSError as exc:
                os.close(fd)
                raise LockError(f"cannot lock {self.path}: {exc.strerror}") from None
            self._fd = fd
            return True

    def held(self) -> bool:
        if self._fd is None:
            return False
        # Someone deleting or replacing the file would let a second run lock a new inode.
        try:
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock


class DoltSession:
    """One connection to the Dolt sql-server, kept for the whole run.

    The named lock lives on it (named locks belong to a session), and between polls the
    change detector (jobs/detect.py) asks `DOLT_HASHOF_DB()` on it, so a dispatcher holds
    one connection, not one per poll. Autocommit: each statement is its own transaction
    and sees every write committed before it; inside an open REPEATABLE READ transaction
    the hash would stay frozen at the transaction's snapshot.
    """

    def __init__(
        self, host: str, port: int, user: str, password: str, database: str, tls: bool = False
    ) -> None:
        self.host, self.port, self.user, self.database = host, port, user, database
        self._password = password
        self._tls = tls
        self._conn: Any = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> Any:
        # Imported here: embedded mode, the reaper's idle runs and the tests that never touch
        # a server must not need the library (jobs/ imports with stdlib + pydantic + httpx).
        import pymysql  # noqa: PLC0415

        try:
            return pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self._password,
                database=self.database,
                connect_timeout=_SQL_TIMEOUT_SECONDS,
                read_timeout=_SQL_TIMEOUT_SECONDS,
                write_timeout=_SQL_TIMEOUT_SECONDS,
                ssl={"check_hostname": False} if self._tls else None,
                autocommit=True,
            )
        except pymysql.MySQLError as exc:
            raise LockError(f"cannot connect to Dolt at {self.where}: {exc}") from None

    def scalar(self, sql: str, args: tuple[Any, ...] = (), *, reconnect: bool = False) -> Any:
        """The first column of the first row. `reconnect`: open a new connection when there
        is none (after a drop). A new session holds none of the old one's named locks, and
        `held()` asks on the session there is now, so a lock lost that way is noticed.

        Raises LockError when the server cannot be reached, SqlRefused when it answered
        with an error."""
        import pymysql  # noqa: PLC0415 (see _connect)

        if self._conn is None:
            if not reconnect:
                raise LockError(f"no connection to Dolt at {self.where}")
            self._conn = self._connect()
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, args)
                row = cursor.fetchone()
        except pymysql.MySQLError as exc:
            what = sql.removeprefix("SELECT ").split("(", maxsplit=1)[0]
            if _server_answered(exc):
                raise SqlRefused(f"{what} on {self.where}: {exc}") from None
            self.close()  # a dropped session: its named locks are gone with it
            raise LockError(f"{what} on {self.where}: {exc}") from None
        return row[0] if row else None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a session the server already dropped may raise; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()


class SqlRefused(LockError):
    """The Dolt server answered a statement with an error (unknown function, no privilege)."""


def _server_answered(exc: Exception) -> bool:
    # MySQL client-side error codes (2000-2999: connection lost, server gone) mean the
    # server never answered; below 2000 it did, with a refusal.
    # PyMySQL's own "already closed" has code 0: not an answer either.
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return 0 < code < 2000


class DoltNamedLock:
    """`GET_LOCK(name, 0)` on the run's connection to the Dolt sql-server (DoltSession)."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        tls: bool = False,
        assignee: str = DEFAULT_ASSIGNEE,
    ) -> None:
        self.host, self.port, self.user, self.database = host, port, user, database
        self.session = DoltSession(host, port, user, password, database, tls)
        self.name = lock_name(database, assignee)
        self._held = False

    @property
    def description(self) -> str:
        return f"GET_LOCK('{self.name}') on {self.session.where}"

    def try_acquire(self, wait_seconds: float = 0.0) -> bool:
        if self._held:
            return True
        deadline = time.monotonic() + wait_seconds
        while True:
            if self._get_lock() == 1:
                self._held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY_SECONDS)

    def _get_lock(self) -> Any:
        sql, args = "SELECT GET_LOCK(%s, 0)", (self.name,)
        kept = self.session.connected
        try:
            return self.session.scalar(sql, args, reconnect=True)
        except SqlRefused:
            raise
        except LockError:
            if not kept:
                raise
            # The kept session may have died since the last poll (a server restart, an idle
            # timeout); nothing is held on it, so one fresh connection may take its place.
            return self.session.scalar(sql, args, reconnect=True)

    def held(self) -> bool:
        if not self._held:
            return False
        # The server's view, on our own session: a dropped connection cannot answer yes.
        return bool(self.session.scalar("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self.name,)))

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self.session.scalar("SELECT RELEASE_LOCK(%s)", (self.name,))
        except LockError:
            self.session.close()  # closing the session releases it anyway


def lock_on(
    database: Database, environ: Mapping[str, str], assignee: str = DEFAULT_ASSIGNEE
) -> DispatchLock:
    """The lock of `assignee`'s queue in the database bd opens (jobs/database.py): a flock in
    its beads dir, or a named lock on the Dolt server bd talks to."""
    if database.server is None:
        return FileLock(database.dir / lock_file_name(assignee))
    server = database.server
    return DoltNamedLock(
        host=server.host,
        port=server.port,
        user=server.user,
        password=environ.get(PASSWORD_ENV, ""),
        database=database.name,
        tls=server.tls,
        assignee=assignee,
    )
