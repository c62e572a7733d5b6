"""Where online feature state lives: a small get/put protocol over per-entity state blobs.

Each entity's state (``aggregates.EntityState`` or ``aggregates.Profile``) is one
picklable object, so a remote store (Redis) can keep one blob per ``(kind, key)``.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateStore(Protocol):
    """Per-entity state by ``(kind, key)``; ``kind`` is an entity kind or ``"profile"``."""

    def get(self, kind: str, key: Any) -> Any | None: ...

    def put(self, kind: str, key: Any, state: Any) -> None: ...


class MemoryStateStore:
    """In-process store: live objects in one dict per kind (``put`` of the same object is free)."""

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        self._kinds: dict[str, dict[Any, Any]] = {}

    def _kind(self, kind: str) -> dict[Any, Any]:
        d = self._kinds.get(kind)
        if d is None:
            d = self._kinds[kind] = {}
        return d

    def get(self, kind: str, key: Any) -> Any | None:
        return self._kind(kind).get(key)

    def put(self, kind: str, key: Any, state: Any) -> None:
        self._kind(kind)[key] = state

    def __len__(self) -> int:
        return sum(len(d) for d in self._kinds.values())
