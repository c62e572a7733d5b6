"""Where online feature state lives: a small get/put protocol over per-entity state blobs.

Each entity's state (``aggregates.EntityState`` or ``aggregates.Profile``) is one
picklable object, so a remote store (Redis) can keep one blob per ``(kind, key)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
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

    ``key_hash`` with ``hashed_kinds``: the states of those kinds are kept under the keyed
    hash of their identifier, the decision log's pseudonym (`decision_records.Pseudonymiser`),
    so that a label whose event left the idempotency records still finds its entities from
    the log's hashes, through `by_stored_key` (as on Redis, where every key is hashed).
    ``get`` and ``put`` take identifiers in the clear either way.
    """

    __slots__ = ("_dormant", "_hash", "_hashed_kinds", "_last", "_profiles", "_states")

    def __init__(
        self, key_hash: Callable[[str], str] | None = None, hashed_kinds: Iterable[str] = ()
    ) -> None:
        self._profiles: dict[Any, Any] = {}
        self._states: dict[str, OrderedDict[Any, Any]] = {}  # kind -> key -> state, by last put
        self._dormant: dict[str, dict[Any, Dormant]] = {}
        self._hash = key_hash
        self._hashed_kinds = frozenset(hashed_kinds) if key_hash is not None else frozenset()
        # kind -> (identifier, its hash): an event gets, then puts, each entity once
        self._last: dict[str, tuple[Any, str]] = {}

    def _kind(self, kind: str) -> OrderedDict[Any, Any]:
        d = self._states.get(kind)
        if d is None:
            d = self._states[kind] = OrderedDict()
        return d

    def __getstate__(self) -> dict[str, Any]:
        """For a snapshot: everything but the hash function (`attach_hash` gives it back)."""
        return {
            "profiles": self._profiles,
            "states": self._states,
            "dormant": self._dormant,
            "hashed_kinds": self._hashed_kinds,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._profiles = state["profiles"]
        self._states = state["states"]
        self._dormant = state["dormant"]
        self._hashed_kinds = state["hashed_kinds"]
        self._hash = None
        self._last = {}

    def attach_hash(self, key_hash: Callable[[str], str]) -> None:
        """The hash function of a store read back from a snapshot (the same key's)."""
        self._hash = key_hash
        self._last = {}

    def stored_key(self, kind: str, key: Any) -> Any:
        """The key ``kind``'s state of ``key`` is kept under: its hash for a hashed kind."""
        if kind not in self._hashed_kinds:
            return key
        last = self._last.get(kind)
        if last is not None and last[0] == key:
            return last[1]
        assert self._hash is not None
        hashed = self._hash(str(key))
        self._last[kind] = (key, hashed)
        return hashed

    def hashes(self, kind: str) -> bool:
        """Whether ``kind``'s states are kept under hashed keys."""
        return kind in self._hashed_kinds

    def by_stored_key(self) -> StateStore:
        """This store, addressed by the keys it keeps states under (hashes for hashed kinds)."""
        return _ByStoredKey(self)

    def get(self, kind: str, key: Any) -> Any | None:
        if kind == PROFILE:
            return self._profiles.get(key)
        if self._hashed_kinds:
            key = self.stored_key(kind, key)
        return self._get(kind, key)

    def put(self, kind: str, key: Any, state: Any) -> None:
        if kind == PROFILE:
            self._profiles[key] = state
            return
        if self._hashed_kinds:
            key = self.stored_key(kind, key)
        self._put(kind, key, state)

    def _get(self, kind: str, key: Any) -> Any | None:
        live = self._states.get(kind)
        st = live.get(key) if live is not None else None
        if st is None:
            kept = self._dormant.get(kind)
            if kept and (dormant := kept.get(key)) is not None:
                return expiry.revive(kind, dormant)
        return st

    def _put(self, kind: str, key: Any, state: Any) -> None:
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
        """(stored key, state) of the live entities of ``kind``, least recently put first."""
        return iter(self._states.get(kind, {}).items())

    def counts(self) -> dict[str, tuple[int, int]]:
        """kind -> (live states, dormant records)."""
        kinds = sorted(set(self._states) | set(self._dormant))
        return {k: (len(self._states.get(k, ())), len(self._dormant.get(k, ()))) for k in kinds}

    def __len__(self) -> int:
        """Live states and profiles (not dormant records)."""
        return len(self._profiles) + sum(len(d) for d in self._states.values())


class _ByStoredKey:
    """A `MemoryStateStore` addressed by stored keys: a label routed by the log's hashes."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryStateStore) -> None:
        self._store = store

    def get(self, kind: str, key: Any) -> Any | None:
        return self._store._profiles.get(key) if kind == PROFILE else self._store._get(kind, key)

    def put(self, kind: str, key: Any, state: Any) -> None:
        if kind == PROFILE:
            self._store._profiles[key] = state
        else:
            self._store._put(kind, key, state)
