"""The PostgreSQL decision log's local spool: durable SQLite files, one per live process.

When PostgreSQL fails or does not answer in time, decisions and labels are
committed here instead (SQLite, WAL, ``synchronous=FULL``), and moved to
PostgreSQL later. Several worker processes may share one spool directory, so:

- every process writes only its own file, ``spool-<pid>-<random>.sqlite``, and
  holds an exclusive ``flock`` on it for as long as it lives (the kernel drops the
  lock when the process dies, however it dies);
- a file whose lock can be taken belongs to no live process: it is an orphan,
  and the process that takes the lock adopts it (flushes it, then deletes it);
- a new file is created and locked under a hidden name and only then renamed
  into place, so no other process can adopt it in between.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from risk_service.decision_log import SELECT_DECISION, SQLiteDecisionLog
from risk_service.decision_records import DecisionLogError, DecisionRecord, record_from_row
from risk_service.labels import LabelRecord

log = logging.getLogger("risk_service.decision_log")
PATTERN = "spool-*.sqlite"


class SpoolFile:
    """One spool file, open and exclusively locked by this process."""

    def __init__(self, path: Path, fd: int, spool: SQLiteDecisionLog) -> None:
        self.path = path
        self.fd = fd
        self.log = spool

    def is_empty(self) -> bool:
        return self.log.count() == 0 and self.log.count_labels() == 0

    def close(self, *, delete: bool) -> None:
        """Close the database; delete its files first if asked; then release the lock."""
        try:
            self.log.close()
            if delete:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        finally:
            os.close(self.fd)


def try_lock(fd: int) -> bool:
    """An exclusive flock on fd without waiting: False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_orphan(path: Path) -> int | None:
    """An fd of ``path`` holding its exclusive lock when no live process holds it and the
    file is still the one at ``path`` (not retired between our open and our lock); else None.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if try_lock(fd) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


class SpoolDir:
    """This process's spool file plus the orphans it adopted; reads look in all of them."""

    def __init__(self, directory: str | Path, hash_key: bytes) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DecisionLogError(
                f"decision log spool directory {self.directory} cannot be created: {exc}; "
                "set DECISION_LOG_SPOOL_DIR to a writable local directory"
            ) from exc
        self._key = hash_key
        self._lock = threading.RLock()
        self._refused: set[Path] = set()
        self.own = self._create()
        self.adopted: list[SpoolFile] = []
        self._siblings: dict[Path, sqlite3.Connection] = {}  # other processes' files, read-only

    def _create(self) -> SpoolFile:
        name = f"spool-{os.getpid()}-{secrets.token_hex(4)}.sqlite"
        hidden = self.directory / f".{name}.creating"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not try_lock(fd):  # nobody else can know the hidden name
                raise DecisionLogError(f"cannot lock the new spool file {hidden}")
            path = self.directory / name
            hidden.rename(path)  # same inode: the lock moves with it
            return SpoolFile(path, fd, SQLiteDecisionLog(path, self._key, synchronous="FULL"))
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise

    def adopt_orphans(self) -> list[Path]:
        """Take every spool file no live process holds; returns the paths adopted now."""
        adopted: list[Path] = []
        with self._lock:
            known = {self.own.path, *(f.path for f in self.adopted), *self._refused}
            for path in sorted(self.directory.glob(PATTERN)):
                if path in known:
                    continue
                found = self._try_adopt(path)
                if found is not None:
                    self.adopted.append(found)
                    adopted.append(path)
        for path in adopted:
            log.info("adopted the orphan decision log spool %s", path)
        return adopted

    def _try_adopt(self, path: Path) -> SpoolFile | None:
        fd = lock_orphan(path)
        if fd is None:
            return None
        try:
            return SpoolFile(path, fd, SQLiteDecisionLog(path, self._key, synchronous="FULL"))
        except FileNotFoundError:
            os.close(fd)
            return None
        except (DecisionLogError, sqlite3.Error) as exc:  # another key, newer, or damaged
            os.close(fd)  # leave it for a human, and keep starting
            self._refused.add(path)
            log.error("decision log spool %s not adopted: %s", path, exc)
            return None

    def files(self) -> list[SpoolFile]:
        with self._lock:
            return [self.own, *self.adopted]

    def retire(self, spool: SpoolFile) -> None:
        """An adopted file that is now empty: delete it and release its lock."""
        with self._lock:
            if spool in self.adopted and spool.is_empty():
                self.adopted.remove(spool)
                spool.close(delete=True)
                log.info("decision log spool %s flushed and removed", spool.path)

    @contextmanager
    def reading(self) -> Iterator[list[SpoolFile]]:
        """The files, held open for the duration (retire waits)."""
        with self._lock:
            yield [self.own, *self.adopted]

    def get(self, event_id: str) -> DecisionRecord | None:
        """In this process's files, then (read-only) in the live files of the other processes
        on this host: a retry that reaches another worker finds the answer its first request
        got there while PostgreSQL was away, instead of answering anew."""
        with self.reading() as files:
            for spool in files:
                found = spool.log.get(event_id)
                if found is not None:
                    return found
        return self._peek(event_id)

    def _peek(self, event_id: str) -> DecisionRecord | None:
        with self._lock:
            mine = {self.own.path, *(f.path for f in self.adopted), *self._refused}
            for path in sorted(self.directory.glob(PATTERN)):
                if path in mine:
                    continue
                try:
                    conn = self._siblings.get(path)
                    if conn is None:
                        conn = sqlite3.connect(  # used by any thread, under self._lock
                            f"file:{path}?mode=ro", uri=True, timeout=0.05, check_same_thread=False
                        )
                        self._siblings[path] = conn
                    row = conn.execute(SELECT_DECISION, (event_id,)).fetchone()
                except sqlite3.Error:  # being created, retired or adopted: not there
                    self._forget_sibling(path)
                    continue
                if row is not None:
                    return record_from_row(row)
            for gone in [p for p in self._siblings if not p.exists()]:
                self._forget_sibling(gone)
        return None

    def _forget_sibling(self, path: Path) -> None:
        conn = self._siblings.pop(path, None)
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def labels(self, event_id: str) -> list[LabelRecord]:
        with self.reading() as files:
            return [label for spool in files for label in spool.log.labels(event_id)]

    def event_ids(self) -> set[str]:
        """The event_ids of the decisions waiting in the spool."""
        with self.reading() as files:
            return {e for spool in files for e in spool.log.event_ids()}

    def spooled(self) -> int:
        """Rows (decisions and labels) waiting in the spool."""
        with self.reading() as files:
            return sum(spool.log.count() + spool.log.count_labels() for spool in files)

    def close(self) -> None:
        """Release every file; an empty one is deleted, a non-empty one stays for adoption."""
        with self._lock:
            for spool in [self.own, *self.adopted]:
                try:
                    spool.close(delete=spool.is_empty())
                except Exception:  # one bad file must not keep the others locked
                    log.exception("closing decision log spool %s failed", spool.path)
            self.adopted = []
            for path in list(self._siblings):
                self._forget_sibling(path)


__all__ = ["PATTERN", "SpoolDir", "SpoolFile"]
