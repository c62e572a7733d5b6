"""The audit trail of lifecycle actions: `models/audit.jsonl`, one JSON object per line.

Every promote, rollback, challenger change and policy addition, from the `risk`
command or over HTTP, is appended, refused attempts included. A line holds:

    ts        ISO 8601 UTC instant, milliseconds ("2026-11-28T09:30:00.123Z")
    actor     who: the OS user for the CLI, the API key id over HTTP
    action    promote | rollback | shadow | shadow_clear | policy_add
    kind      fraud | credit | policy
    version   the version acted on (for a rollback: the one restored)
    previous  the version it replaced (champion, or challenger for shadow actions)
    outcome   ok | refused
    reason    why it was refused (null when ok)
    host      the machine's host name

Appends are serialised between processes by an exclusive lock on the file, written
with one `write`, and fsynced before the call returns.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.jsonl"
ACTIONS: tuple[str, ...] = ("promote", "rollback", "shadow", "shadow_clear", "policy_add")
OUTCOMES: tuple[str, ...] = ("ok", "refused")


def cli_actor() -> str:
    """The OS user running the command (the CLI's actor)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def audit_path(models_dir: Path) -> Path:
    return Path(models_dir) / AUDIT_FILE


def append(
    models_dir: Path,
    *,
    actor: str,
    action: str,
    kind: str,
    version: str | None,
    previous: str | None,
    outcome: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Append one entry durably (flushed and fsynced) and return it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; expected one of {ACTIONS}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}; expected one of {OUTCOMES}")
    entry: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": actor,
        "action": action,
        "kind": kind,
        "version": version,
        "previous": previous,
        "outcome": outcome,
        "reason": reason,
        "host": socket.gethostname(),
    }
    data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
    path = audit_path(models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # lines from concurrent writers never interleave
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:  # make the new file's directory entry durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return entry


def read(models_dir: Path, *, kind: str | None = None) -> list[dict[str, Any]]:
    """Every entry, oldest first (optionally of one kind); an unreadable line is reported."""
    return [e for e in _entries(audit_path(models_dir)) if kind is None or e.get("kind") == kind]


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # e.g. a line torn by a crash mid-write
                yield {"line": number, "outcome": "unreadable", "reason": line.strip()[:200]}
                continue
            if isinstance(entry, dict):
                yield entry


def format_entry(entry: dict[str, Any]) -> str:
    """One human-readable line: when, who, what, and how it ended."""
    if entry.get("outcome") == "unreadable":
        return f"line {entry.get('line')}: unreadable: {entry.get('reason')}"
    was = f" (was {entry['previous']})" if entry.get("previous") else ""
    why = f": {entry['reason']}" if entry.get("reason") else ""
    return (
        f"{entry.get('ts')}  {entry.get('actor')}@{entry.get('host')}  "
        f"{entry.get('action')} {entry.get('kind')} {entry.get('version') or '-'}{was}  "
        f"{entry.get('outcome')}{why}"
    )
