"""The degraded-event backlog on disk: one SQLite file per live process, adopted when it dies.

`backlog.py` keeps the events answered degraded while Redis was away until their state update
can be applied. Kept only in memory, the updates of a worker killed during an outage were
lost (its decisions were logged, its velocities not). So each entry is also committed here
before the answer goes out (WAL, ``synchronous=NORMAL``: it survives the process, like the
embedded log's rows), and deleted once applied.

The files follow the spool's rules (`decision_log_spool.py`): ``backlog-<pid>-<random>.sqlite``
in the spool directory, an exclusive ``flock`` held for the process's lifetime, created under
a hidden name; a file whose lock can be taken belongs to no live process, and the process that
takes it adopts its entries (copies them into its own file, then deletes the orphan).

Entries hold identifiers only as the state store's keyed hashes (`DegradedEvent.hashed`), like
everything in Redis.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
from pathlib import Path

from risk_service.decision_log_spool import lock_orphan, try_lock

log = logging.getLogger("risk_service.backlog")
PATTERN = "backlog-*.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS pending (event_id TEXT PRIMARY KEY, entry BLOB NOT NULL)"
_ALL = "SELECT event_id, entry FROM pending ORDER BY rowid"


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(_SCHEMA)
    return conn


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class BacklogFile:
    """This process's backlog file; thread-safe."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._refused: set[Path] = set()  # damaged orphans, left alone
        name = f"backlog-{os.getpid()}-{secrets.token_hex(4)}.sqlite"
        hidden = self.directory / f".{name}.creating"
        self._fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not try_lock(self._fd):  # nobody else can know the hidden name
                raise OSError(f"cannot lock the new backlog file {hidden}")
            self.path = self.directory / name
            hidden.rename(self.path)  # same inode: the lock moves with it
            self._conn = _open(self.path)
        except BaseException:
            os.close(self._fd)
            hidden.unlink(missing_ok=True)
            raise

    def add(self, event_id: str, entry: bytes) -> None:
        """Durable on return (the decision is logged, and answered, after this)."""
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO pending VALUES (?, ?)", (event_id, entry))

    def remove(self, event_id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))

    def entries(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return self._conn.execute(_ALL).fetchall()

    def adopt_orphans(self) -> list[tuple[str, bytes]]:
        """The entries of every backlog file no live process holds, now in this process's file
        (the orphans are deleted); oldest file first."""
        adopted: list[tuple[str, bytes]] = []
        for path in sorted(self.directory.glob(PATTERN)):
            if path == self.path or path in self._refused:
                continue
            entries = self._take(path)
            if entries is not None:
                adopted += entries
        return adopted

    def _take(self, path: Path) -> list[tuple[str, bytes]] | None:
        fd = lock_orphan(path)
        if fd is None:
            return None  # its process is alive, or another adopter took it
        try:
            orphan = _open(path)
            try:
                entries = orphan.execute(_ALL).fetchall()
            finally:
                orphan.close()
            with self._lock:  # ours first, durably, then the orphan goes
                self._conn.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?)", entries)
        except sqlite3.Error as exc:  # damaged: leave it for a human, keep serving
            self._refused.add(path)
            log.error("backlog file %s not adopted: %s", path, exc)
            return None
        finally:
            os.close(fd)
        _delete(path)
        if entries:
            log.warning(
                "adopted %d degraded event(s) of a dead process from %s", len(entries), path
            )
        return entries

    def close(self) -> None:
        """Release the file: deleted when empty, else left for the next process to adopt."""
        with self._lock:
            empty = self._conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
            self._conn.close()
            if empty:
                _delete(self.path)
            os.close(self._fd)
