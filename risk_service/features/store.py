"""Where online feature state lives: a small get/put protocol over per-entity state blobs.

Each entity's state (``aggregates.EntityState`` or ``aggregates.Profile``) is one
picklable object, so a remote store (Redis) can keep one blob per ``(kind, key)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from risk_service.features import expiry
from risk_service.features.expiry import Dormant

PROFILE = "profile"


class StateStore(Protocol):
    """Per-entity state by ``(kind, key)``; ``kind`` is an entity kind or ``"profile"``."""

    def get(self, kind: str, key: Any) -> Any | None: ...

    def put(self, kind: str, key: Any, state: Any) -> None: ...


class MemoryStateStore:
    """In-process store: live objects, one ordered dict per entity kind, profiles in another.

    Bounded by ``forget_idle``, which the scorer calls as event time advances: an entity
    idle past its kind's retention is forgotten without changing any feature
    (`features/expiry.py`). Entity states are kept in the order they were last put, so
    the sweep only looks at the front; accounts, instruments and devices leave a small
    ``Dormant`` record that ``get`` revives. Profiles are kept until replaced.
    """

    __slots__ = ("_dormant", "_profiles", "_states")

    def __init__(self) -> None:
        self._profiles: dict[Any, Any] = {}
        self._states: dict[str, OrderedDict[Any, Any]] = {}  # kind -> key -> state, by last put
        self._dormant: dict[str, dict[Any, Dormant]] = {}

    def _kind(self, kind: str) -> OrderedDict[Any, Any]:
        d = self._states.get(kind)
        if d is None:
            d = self._states[kind] = OrderedDict()
        return d

    def get(self, kind: str, key: Any) -> Any | None:
        if kind == PROFILE:
            return self._profiles.get(key)
        live = self._states.get(kind)
        st = live.get(key) if live is not None else None
        if st is None:
            kept = self._dormant.get(kind)
            if kept and (dormant := kept.get(key)) is not None:
                return expiry.revive(kind, dormant)
        return st

    def put(self, kind: str, key: Any, state: Any) -> None:
        if kind == PROFILE:
            self._profiles[key] = state
            return
        d = self._kind(kind)
        d[key] = state
        d.move_to_end(key)
        kept = self._dormant.get(kind)
        if kept:
            kept.pop(key, None)

    def forget_idle(self, now_ms: int, limit: int = 10_000) -> dict[str, int]:
        """Forget up to ``limit`` entities idle since before ``now_ms`` minus their kind's
        retention; returns how many of each kind. Entities are looked at in the order they
        were last put, and the sweep of a kind stops at the first still active: one updated
        late (put after newer ones) is forgotten later than it could be, never earlier."""
        forgotten: dict[str, int] = {}
        left = limit
        for kind, live in self._states.items():
            cutoff = now_ms - expiry.RETENTION_MS[kind]
            n = 0
            while live and n < left:
                key = next(iter(live))
                st = live[key]
                if expiry.active_ms(st) >= cutoff:
                    break
                del live[key]
                n += 1
                if (dormant := expiry.dormant(kind, st)) is not None:
                    self._dormant.setdefault(kind, {})[key] = dormant
            if n:
                forgotten[kind] = n
                left -= n
        return forgotten

    def states(self, kind: str) -> Iterator[tuple[Any, Any]]:
        """(key, state) of the live entities of ``kind``, least recently put first."""
        return iter(self._states.get(kind, {}).items())

    def counts(self) -> dict[str, tuple[int, int]]:
        """kind -> (live states, dormant records)."""
        kinds = sorted(set(self._states) | set(self._dormant))
        return {k: (len(self._states.get(k, ())), len(self._dormant.get(k, ()))) for k in kinds}

    def __len__(self) -> int:
        """Live states and profiles (not dormant records)."""
        return len(self._profiles) + sum(len(d) for d in self._states.values())
