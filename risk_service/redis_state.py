"""Online state on Redis, shared by every worker and replica: optimistic, atomic transactions.

One event is one transaction (docs/architecture.md, "Shared state on Redis"):

1. ``begin`` reads, in one round trip (MGET), the event's idempotency record, the
   lateness watermark and the state blob of every entity the event names (plus
   the account's profile).
2. The caller computes features and updates the states in Python: the same
   ``OnlineFeatureEngine`` code as the in-memory store, so features are identical.
3. ``commit`` runs one Lua script, atomically: if the idempotency record now exists
   it answers EXISTS; if any state read in step 1 has changed since (every blob
   starts with a random 16-character version token) it answers CONFLICT and the
   caller starts again from step 1; else it writes the changed states, the
   idempotency record and the watermark together. So two concurrent requests for
   one account never lose an update, and a retry never counts twice.

Keys: ``<prefix><feature-set version>:<kind>:<HMAC of the id>`` for states (no
identifier in the clear, and the hashes match the decision log's, so a label can
find its entities from the log alone), ``<prefix>idem:<event_id>`` for idempotency
records. TTLs bound memory: a state expires after its longest window (plus a day)
without an event, where it answers as a new one would (`features/expiry.py`); but an
account's, instrument's or device's state is kept as long as a profile
(``profile_ttl_ms``, 400 days), because its time-since and travel features read its last
event however long ago; an idempotency record expires after ``idempotency_ttl_ms``.

Every call has a socket timeout of a few milliseconds and goes through a circuit
breaker; failures raise ``StoreUnavailable`` and the scorer answers degraded.
All keys of one transaction must live on one Redis node (no Redis Cluster).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from risk_service.breaker import CircuitBreaker
from risk_service.decision_log import Pseudonymiser
from risk_service.features import codec
from risk_service.features.derived import is_missing
from risk_service.features.expiry import KEEPS_LAST_SEEN, RETENTION_MS
from risk_service.features.spec import (
    ENTITY_KEYS,
    FEATURE_SET_VERSION,
    ROLLINGS,
)
from risk_service.redis_conn import Connections, LeanScript

TOKEN_LEN = 16

_COMMIT_LUA = """
-- KEYS[1] idempotency record, KEYS[2] watermark, KEYS[3..] states read by the transaction
-- ARGV[1] idempotency blob, ARGV[2] its TTL ms, ARGV[3] event time ms ('' = none),
-- then per state: expected version token ('' = absent), new blob ('' = unchanged), TTL ms
if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
local n = #KEYS - 2
for i = 1, n do
  if redis.call('GETRANGE', KEYS[i + 2], 0, 15) ~= ARGV[1 + 3 * i] then return 'CONFLICT' end
end
for i = 1, n do
  local blob = ARGV[2 + 3 * i]
  if blob ~= '' then redis.call('SET', KEYS[i + 2], blob, 'PX', ARGV[3 + 3 * i]) end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ts = tonumber(ARGV[3])
if ts then
  local wm = tonumber(redis.call('GET', KEYS[2]) or '')
  if not wm or ts > wm then redis.call('SET', KEYS[2], ARGV[3]) end
end
return 'OK'
"""


class StoreUnavailable(RuntimeError):
    """The shared store failed, timed out, or its circuit breaker is open: answer degraded."""


@dataclass
class StoredDecision:
    """An idempotency record read back: enough to answer a retry and to route a label."""

    body_hash: str
    created_ms: int
    response: dict[str, Any]
    entities: dict[str, str]  # label-feature kind -> hashed entity id
    x: list[float] | None = None  # fraud features, for reasons on a take-over
    credit_x: list[float] | None = None


@dataclass
class Transaction:
    """One event's reads (blobs and their version tokens) and the writes made on them."""

    idem_key: str  # written with the states; its existence ends the transaction (EXISTS)
    keys: dict[tuple[str, Any], str]  # (kind, id) -> redis key
    tokens: dict[str, str]  # redis key -> version token read ('' = absent)
    blobs: dict[str, bytes]  # redis key -> payload read (absent keys missing)
    existing: bytes | None  # the idempotency record's blob, if it exists
    watermark_ms: int | None
    decoded: dict[str, Any] = field(default_factory=dict)
    writes: dict[str, tuple[str, Any]] = field(default_factory=dict)  # key -> (kind, state)
    failed: bool = False  # a state could not be decoded: commit no state
    # a read during the engine's work failed (timeout, breaker): the engine may have caught it
    # and scored degraded, so the caller must not commit this transaction (scoring_shared.py)
    unavailable: StoreUnavailable | None = None


class TransactionStore:
    """The ``StateStore`` an ``OnlineFeatureEngine`` sees during one transaction; its keys are
    hashed ids (the engine hashes them: ``OnlineFeatureEngine(store, key_hash=...)``)."""

    def __init__(self, state: RedisState, txn: Transaction) -> None:
        self._state = state
        self._txn = txn

    def get(self, kind: str, key: Any) -> Any | None:
        txn = self._txn
        rkey = txn.keys.get((kind, key))
        if rkey is None:  # not prefetched (not expected): read it now, and check it at commit
            rkey = self._fetch(kind, key)
        value = txn.decoded.get(rkey)
        if value is None and rkey in txn.blobs:
            try:
                value = txn.decoded[rkey] = codec.decode(kind, txn.blobs[rkey])
            except ValueError:
                txn.failed = True
                raise
        return value

    def put(self, kind: str, key: Any, state: Any) -> None:
        txn = self._txn
        rkey = txn.keys.get((kind, key))
        if rkey is None:
            rkey = self._fetch(kind, key)
        txn.decoded[rkey] = state
        txn.writes[rkey] = (kind, state)

    def _fetch(self, kind: str, key: Any) -> str:
        """Read a state that was not prefetched; a failure is remembered on the transaction,
        because the engine's caller may catch it and carry on degraded."""
        txn = self._txn
        rkey = self._state.hashed_key(kind, key)
        try:
            self._state.fetch_into(txn, [rkey])
        except StoreUnavailable as exc:
            txn.unavailable = exc
            raise
        txn.keys[(kind, key)] = rkey
        return rkey


def _no_observe(store: str, op: str, seconds: float, ok: bool) -> None:
    return None


def state_ttls(profile_ttl_ms: int) -> dict[str, int]:
    """Kind -> TTL of its keys: the retention of its windows, but the profile's for kinds
    whose last event features read without a window (in memory: their `Dormant` records)."""
    ttls = dict(RETENTION_MS)
    for kind in KEEPS_LAST_SEEN:
        ttls[kind] = max(ttls[kind], profile_ttl_ms)
    ttls["profile"] = profile_ttl_ms
    return ttls


class RedisState:
    """The Redis side of online state and idempotency; one per process (thread-safe)."""

    def __init__(
        self,
        url: str,
        hash_key: bytes,
        *,
        prefix: str = "risk:",
        timeout_ms: float = 5.0,
        idempotency_ttl_ms: int = 7 * 24 * 3600 * 1000,
        profile_ttl_ms: int = 400 * 24 * 3600 * 1000,
        breaker: CircuitBreaker | None = None,
        observe: Callable[[str, str, float, bool], None] = _no_observe,
        max_connections: int = 64,
    ) -> None:
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_ms / 1000.0,
            socket_connect_timeout=max(timeout_ms, 50.0) / 1000.0,
            retry_on_timeout=False,
            max_connections=max_connections,
        )
        self.client.connection_pool.connection_kwargs["retry"] = redis.retry.Retry(
            redis.backoff.NoBackoff(), 0
        )
        self._url = url
        self.prefix = prefix
        self.hash = Pseudonymiser(hash_key)
        self.idempotency_ttl_ms = int(idempotency_ttl_ms)
        self.profile_ttl_ms = int(profile_ttl_ms)
        self.breaker = breaker or CircuitBreaker("redis")
        self.observe = observe
        # the request path's two calls, without redis-py's command layer (redis_conn.py)
        self._lean = Connections(self.client.connection_pool)
        self._commit_script = LeanScript(self._lean, _COMMIT_LUA)
        self._ttl = state_ttls(self.profile_ttl_ms)
        self._state_prefix = f"{prefix}{FEATURE_SET_VERSION}:"
        self.watermark_key = f"{prefix}watermark"

    # -- keys ------------------------------------------------------------------------------
    def entity_key(self, kind: str, key: Any) -> str:
        return self.hashed_key(kind, self.hash(str(key)))

    def hashed_key(self, kind: str, hashed: str) -> str:
        return f"{self._state_prefix}{kind}:{hashed}"

    def idempotency_key(self, event_id: str) -> str:
        return f"{self.prefix}idem:{event_id}"

    def label_key(self, event_id: str, label: str) -> str:
        return f"{self.prefix}label:{label}:{event_id}"

    # -- calls -----------------------------------------------------------------------------
    def _call(self, op: str, fn: Callable[[], Any]) -> Any:
        if not self.breaker.allow():
            raise StoreUnavailable(f"redis circuit breaker is {self.breaker.state}")
        started = time.perf_counter()
        try:
            result = fn()
        except redis.RedisError as exc:
            self.breaker.failure()
            self.observe("redis", op, time.perf_counter() - started, False)
            raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        self.observe("redis", op, time.perf_counter() - started, True)
        return result

    def ping(self) -> bool:
        return bool(self._call("ping", self.client.ping))

    def check_key(self) -> None:
        """Refuse a Redis whose states were written under another hash key: hashed ids would
        not match, and every velocity would silently restart from zero. Every replica must be
        configured with the same key (HASH_KEY or HASH_KEY_FILE)."""
        stamp = self.hash("risk-service state key check")[:16]
        key = f"{self.prefix}key_check"
        self.client.set(key, stamp, nx=True)
        stored = self.client.get(key)
        if stored is not None and stored != stamp.encode():
            raise RuntimeError(
                f"the state store at prefix {self.prefix!r} was written with another hash key; "
                "give every replica the same HASH_KEY / HASH_KEY_FILE (or another STATE_PREFIX)"
            )

    def hashed_keys_for(self, hashed: Mapping[str, str]) -> dict[tuple[str, Any], str]:
        """(kind, hashed id) -> Redis key: entities named by the decision log's hashes."""
        return {(kind, h): self.hashed_key(kind, h) for kind, h in hashed.items()}

    def begin(self, idem_key: str, keys: dict[tuple[str, Any], str]) -> Transaction:
        """Read the idempotency record, the watermark and the states in one round trip."""
        rkeys = list(keys.values())
        values = self._call(
            "begin", lambda: self._lean.call("MGET", idem_key, self.watermark_key, *rkeys)
        )
        txn = Transaction(
            idem_key=idem_key,
            keys=keys,
            tokens={},
            blobs={},
            existing=values[0],
            watermark_ms=int(values[1]) if values[1] is not None else None,
        )
        _split_into(txn, rkeys, values[2:])
        return txn

    def fetch_into(self, txn: Transaction, rkeys: list[str]) -> None:
        _split_into(txn, rkeys, self._call("get", lambda: self._lean.call("MGET", *rkeys)))

    def commit(self, txn: Transaction, record: bytes, ttl_ms: int, event_ms: int | None) -> str:
        """Write the changed states and ``record`` at ``txn.idem_key`` atomically.

        Returns 'OK', 'CONFLICT' (a state changed since ``begin``: start again) or
        'EXISTS' (the idempotency record appeared meanwhile: another request won).
        Raises StoreUnavailable when a read during the transaction failed: what was computed
        from it is not the event's true state update.
        """
        if txn.unavailable is not None:
            raise StoreUnavailable(f"a read in this transaction failed: {txn.unavailable}")
        rkeys = list(txn.tokens)
        args: list[Any] = [record, int(ttl_ms), "" if event_ms is None else int(event_ms)]
        # one new version token for every state this commit writes: a token is only ever
        # compared with the same key's previous one (os.urandom is a system call; ~4 µs each)
        token = secrets.token_hex(TOKEN_LEN // 2).encode()
        for rkey in rkeys:
            args.append(txn.tokens[rkey])
            write = None if txn.failed else txn.writes.get(rkey)
            if write is None:
                args += [b"", 0]
            else:
                kind, state = write
                args += [token + codec.encode(kind, state), self._ttl[kind]]
        result = self._call(
            "commit",
            lambda: self._commit_script(keys=[txn.idem_key, self.watermark_key, *rkeys], args=args),
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    def stored_decision(self, event_id: str) -> StoredDecision | None:
        blob = self._call("get", lambda: self.client.get(self.idempotency_key(event_id)))
        return decode_stored(blob) if blob else None

    def put_profiles(
        self, profiles: Iterable[tuple[Any, Any]], *, marker: str | None = None, batch: int = 500
    ) -> int:
        """Load (account id, Profile) pairs, unconditionally (an accounts-table load).

        A bulk load is not a request: it uses its own connection with a generous timeout,
        not the few milliseconds of the request path (a worker must not fail to boot on a
        busy Redis). ``marker`` (e.g. the file's hash): once one process has loaded it,
        the others skip it; returns 0 then.
        """
        bulk = redis.Redis.from_url(self._url, socket_timeout=30.0, socket_connect_timeout=10.0)
        try:
            marker_key = f"{self.prefix}loaded:{marker}" if marker else None
            if marker_key and bulk.exists(marker_key):
                return 0
            n = 0
            pipe = bulk.pipeline(transaction=False)
            for account_id, profile in profiles:
                token = secrets.token_hex(TOKEN_LEN // 2).encode()
                blob = token + codec.encode_profile(profile)
                pipe.set(self.entity_key("profile", account_id), blob, px=self.profile_ttl_ms)
                n += 1
                if n % batch == 0:
                    pipe.execute()
            pipe.execute()
            if marker_key:
                bulk.set(marker_key, n, px=self.profile_ttl_ms)
            return n
        finally:
            bulk.close()

    def close(self) -> None:
        self._lean.close()
        self.client.close()


# (state kind, event column) pairs where an event reads another column's entity state, e.g. the
# payee state of the paying account (money the account itself received): prefetched too.
CROSS_READS: tuple[tuple[str, str], ...] = tuple(
    sorted(
        {(r.state, o.query) for r in ROLLINGS for o in r.outputs if o.query != ENTITY_KEYS[r.state]}
    )
)


def prefetch_keys(
    state: RedisState, event: Mapping[str, Any], hashed_ids: Mapping[str, str]
) -> dict[tuple[str, Any], str]:
    """Every state an event's features read, so ``begin`` reads them all in one round trip."""
    keys = state.hashed_keys_for(hashed_ids)
    for kind, column in CROSS_READS:
        value = event.get(column)
        if not is_missing(value):
            h = state.hash(str(value))
            keys[(kind, h)] = state.hashed_key(kind, h)
    return keys


def entity_ids(event: Mapping[str, Any], kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """kind -> the raw entity id an event names (profile: its account), missing ones left out."""
    out: dict[str, Any] = {}
    for kind in kinds if kinds is not None else ENTITY_KEYS:
        value = event.get(ENTITY_KEYS[kind])
        if not is_missing(value):
            out[kind] = value
    account = event.get("account_id")
    if not is_missing(account):
        out["profile"] = account
    return out


def _split_into(txn: Transaction, rkeys: list[str], values: list[bytes | None]) -> None:
    for rkey, blob in zip(rkeys, values, strict=True):
        if blob is None:
            txn.tokens[rkey] = ""
        else:
            txn.tokens[rkey] = blob[:TOKEN_LEN].decode()
            txn.blobs[rkey] = blob[TOKEN_LEN:]


def encode_stored(s: StoredDecision) -> bytes:
    return orjson.dumps(
        {
            "h": s.body_hash,
            "t": s.created_ms,
            "r": s.response,
            "e": s.entities,
            "x": s.x,
            "c": s.credit_x,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def decode_stored(blob: bytes) -> StoredDecision:
    d = orjson.loads(blob)
    return StoredDecision(d["h"], d["t"], d["r"], d["e"], d.get("x"), d.get("c"))
