"""Has anything been written since bd last read the queue? Answered without starting bd.

An idle poll used to be one `bd query`: a Go process opening the database (~100 ms, and
~150 MiB in embedded mode) every poll. The detector reads one value that moves with every
write to the database and stays put on reads (both measured with bd 1.0.2 / dolt 1.84.0,
docs/bd-contract.md "What moves on a write"):

- server mode: `SELECT DOLT_HASHOF_DB()` on the run's Dolt session (jobs/lock.py), the hash
  of the working set of the session's branch. Every committed write moves it: bd's own, the
  agent's notes and closes, a human's assign. A read (query, ready, show) does not.
- embedded mode: the bytes of the store's manifest (`embeddeddolt/<db>/.dolt/noms/manifest`,
  which names the root) and the sizes of its journal files. bd rewrites the manifest file on
  every open, reads included, but its bytes and the journal's length change only on a write.

bd reads when the value moved since the last bd read, on a run's first poll, and at least
every SAFETY_READ_SECONDS, because time alone can make a bead ready (a `defer_until` coming
due) without any write. The value is taken *before* bd reads, so a write that lands between
the two is seen by the next poll; a bd read that failed counts as not done. The detector
never takes the lock. Under the lock, the dispatcher asks it once more: when nothing was
written since the value its candidates were read at, it claims from that read instead of
reading again (two bd processes fewer per hand-off).

When the value cannot be had (a server without DOLT_HASHOF_DB, a user it is refused to, a
store layout this does not know) every poll reads with bd, as before, said once per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from jobs.lock import DispatchLock, DoltNamedLock, DoltSession, FileLock, LockError, SqlRefused
from jobs.log import EventLog

# How late a bead that became ready without a write (a deferral coming due) may be seen.
SAFETY_READ_SECONDS = 60.0
EMBEDDED_STORES = "embeddeddolt"
# In a Dolt store's noms dir: `manifest` is compared by its bytes; LOCK is the open lock.
_MANIFEST, _NOMS_LOCK = "manifest", "LOCK"


class SignalUnavailable(Exception):
    """The change signal cannot be had in this run at all: bd reads every poll."""


class SignalMissed(Exception):
    """The change signal could not be read this once (a dropped connection): bd reads."""


class ChangeSignal(Protocol):
    @property
    def kind(self) -> str: ...

    def value(self) -> Hashable:
        """A value that differs after any write to the database since the last call."""
        ...


class DoltHash:
    """`DOLT_HASHOF_DB()` on the Dolt session the named lock lives on."""

    kind = "dolt_hashof_db"
    # Added to Dolt in June 2024 (dolthub/dolt#7975); an older server answers error 1105
    # "function: 'dolt_hashof_db' not found".
    QUERY = "SELECT DOLT_HASHOF_DB()"

    def __init__(self, session: DoltSession) -> None:
        self._session = session

    def value(self) -> Hashable:
        try:
            # A new connection is safe here: the dispatcher asks between polls, holding no
            # lock, and a session that held one is asked about it on the session it has now.
            return str(self._session.scalar(self.QUERY, reconnect=True))
        except SqlRefused as exc:
            raise SignalUnavailable(str(exc)) from None
        except LockError as exc:
            raise SignalMissed(str(exc)) from None


class StoreManifest:
    """The manifests and journal sizes of the embedded Dolt stores in a beads dir."""

    kind = "manifest"

    def __init__(self, beads_dir: Path) -> None:
        self._stores = beads_dir / EMBEDDED_STORES

    def value(self) -> Hashable:
        stores = sorted(self._stores.glob("*/.dolt/noms"))
        if not stores:
            raise SignalUnavailable(f"no Dolt store under {self._stores}")
        try:
            return tuple(_noms_state(noms) for noms in stores)
        except OSError as exc:
            # A manifest being replaced as we read it: read with bd this once.
            raise SignalMissed(f"{exc.filename}: {exc.strerror}") from None


def _noms_state(noms: Path) -> tuple[object, ...]:
    sizes = sorted(
        (entry.name, entry.stat().st_size)
        for entry in os.scandir(noms)
        if entry.name not in (_MANIFEST, _NOMS_LOCK) and entry.is_file()
    )
    return (noms.parent.parent.name, (noms / _MANIFEST).read_bytes(), tuple(sizes))


def signal_for(lock: DispatchLock) -> ChangeSignal | None:
    """The signal of the database the lock is on: the lock's own Dolt session in server mode,
    the store beside the lock file in embedded mode."""
    if isinstance(lock, DoltNamedLock):
        return DoltHash(lock.session)
    if isinstance(lock, FileLock):
        return StoreManifest(lock.path.parent)
    return None


class Why(StrEnum):
    FIRST = "first"  # the run's first poll, or the first after a read that failed
    CHANGED = "changed"
    SAFETY = "safety"  # nothing written for SAFETY_READ_SECONDS
    NO_SIGNAL = "no_signal"  # the signal is unavailable or missed: as before the detector
    UNCHANGED = "unchanged"  # the only answer that skips bd


@dataclass(frozen=True)
class Look:
    why: Why
    value: Hashable | None = None

    @property
    def read(self) -> bool:
        return self.why != Why.UNCHANGED


class ChangeDetector:
    """Decides, once per poll, whether bd must read the queue: `look()` before the read,
    `seen(look)` once the read succeeded."""

    def __init__(
        self,
        signal: ChangeSignal | None,
        log: EventLog,
        monotonic: Callable[[], float],
        safety_seconds: float = SAFETY_READ_SECONDS,
    ) -> None:
        self._signal = signal
        self._log = log
        self._monotonic = monotonic
        self._safety_seconds = safety_seconds
        self._last: Hashable | None = None
        self._read_at = 0.0
        self._missing = False

    @property
    def kind(self) -> str:
        return "none" if self._signal is None else self._signal.kind

    def look(self) -> Look:
        if self._signal is None:
            return Look(Why.NO_SIGNAL)
        try:
            value = self._signal.value()
        except SignalUnavailable as exc:
            self._log.warning(
                "detector.unavailable",
                signal=self._signal.kind,
                error=str(exc),
                detail="every poll reads with bd, as without the detector",
            )
            self._signal = None
            return Look(Why.NO_SIGNAL)
        except SignalMissed as exc:
            if not self._missing:  # once per streak, not once per poll
                self._log.warning("detector.missed", signal=self._signal.kind, error=str(exc))
            self._missing = True
            self._last = None
            return Look(Why.NO_SIGNAL)
        self._missing = False
        last, self._last = self._last, None  # until seen(): a read that fails is not done
        why = self._compare(last, value)
        if why == Why.UNCHANGED:
            self._last = last
        return Look(why, value)

    def _compare(self, last: Hashable | None, value: Hashable) -> Why:
        if last is None:
            return Why.FIRST
        if value != last:
            return Why.CHANGED
        if self._monotonic() - self._read_at >= self._safety_seconds:
            return Why.SAFETY
        return Why.UNCHANGED

    def unchanged_since_read(self) -> bool:
        """Nothing written since the value the last bd read was taken at, so what that read
        found is what bd would print now. Asked under the lock instead of reading again; any
        doubt (no signal, no read yet, the signal not answering) says False: read again."""
        if self._signal is None or self._last is None:
            return False
        try:
            return self._signal.value() == self._last
        except (SignalUnavailable, SignalMissed):
            return False

    def seen(self, look: Look) -> None:
        """bd read the queue after `look`: the next poll compares with its value."""
        if look.value is not None:
            self._last = look.value
            self._read_at = self._monotonic()
