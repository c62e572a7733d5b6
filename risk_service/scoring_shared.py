"""The request path on a shared store (Redis): optimistic transactions, retries and take-over.

The in-memory path (``Scorer.score``) serialises events with a lock; here several
processes score at once, so one event is one Redis transaction (redis_state.py):
read, compute with the usual engine, commit atomically, start again on a
conflict. Within one process transactions take turns (the scorer's lock, held
for two Redis round trips), so conflicts only arise between processes. The
reasons and the decision-log append follow, as in memory. Identifiers reach
Redis only as keyed hashes (state keys and distinct-set members alike).

A retry of an event whose transaction committed answers from the decision log.
When the log has no record yet, the first request is still finishing (or died
between its commit and its log append, e.g. a killed worker): the retry waits until
``takeover_ms`` after the first request started (at once for an older one: a retry
while PostgreSQL is away) and then finishes the decision itself from the idempotency
record (same response, reasons recomputed when the same model versions are
loaded) and logs it, so an acknowledged decision is always logged.

When Redis fails, times out or its breaker is open, or conflicts outlast the
request deadline, the answer is degraded (request-time features and rules, the
policy's fail mode) and the state is not updated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from risk_service.backlog import DegradedEvent
from risk_service.errors import Conflict
from risk_service.features import CREDIT_FEATURE_NAMES, FEATURE_NAMES, OnlineFeatureEngine
from risk_service.features.expiry import LABEL_HORIZON_MS
from risk_service.features.spec import ENTITY_KEYS, LABEL_KINDS
from risk_service.idempotency import IdempotencyEntry
from risk_service.redis_state import (
    StoredDecision,
    StoreUnavailable,
    TransactionStore,
    decode_stored,
    encode_stored,
    entity_ids,
    prefetch_keys,
)
from risk_service.requests import ScoreRequest
from risk_service.turns import wait_for_turn

if TYPE_CHECKING:
    from risk_service.scoring import Scorer

MAX_ATTEMPTS = 50
POLL_S = 0.002


def score_shared(
    scorer: Scorer, request: ScoreRequest, started: float, now_ms: int
) -> tuple[dict[str, Any], bool]:
    """The response for one validated request on the shared store, and whether it is a replay."""
    shared = scorer.shared
    assert shared is not None
    deadline = started + scorer.settings.deadline_ms / 1000.0
    kinds = ("account",) if request.kind == "credit_application" else None
    ids = {k: shared.hash(str(v)) for k, v in entity_ids(request.event, kinds).items()}
    idem_key = shared.idempotency_key(request.event_id)
    if scorer.backlog.pending(request.event_id):  # answered degraded, not yet in Redis
        before = _answered_before(scorer, request, started)
        if before is not None:
            return before, True
    entry: IdempotencyEntry | None = None
    for _ in range(MAX_ATTEMPTS):
        # One transaction at a time per process: threads of one worker never conflict with
        # each other (hot merchants, one busy account); only other processes can.
        with scorer.lock:
            try:
                txn = shared.begin(idem_key, prefetch_keys(shared, request.event, ids))
            except StoreUnavailable:
                break
            if txn.existing is None:
                engine = OnlineFeatureEngine(TransactionStore(shared, txn), shared.hash)
                candidate = scorer._score_new(request, now_ms, engine, txn.watermark_ms)
                record = encode_stored(_stored(candidate, ids))
                try:
                    outcome = shared.commit(
                        txn, record, shared.idempotency_ttl_ms, request.timestamp_ms
                    )
                except StoreUnavailable:
                    break
        if txn.existing is not None:
            return _replay(scorer, request, decode_stored(txn.existing), started), True
        if outcome == "OK":
            entry = candidate
            break
        if outcome == "CONFLICT" and time.perf_counter() > deadline:
            break  # EXISTS always goes round once more: the next begin answers as a retry
    if entry is None:  # the store is down or too contended: degraded, no state update now
        # Redis cannot say whether this is a retry; the log (this host's spools included)
        # may: a first answer found there is the answer (no second, different one)
        before = _answered_before(scorer, request, started)
        if before is not None:
            return before, True
        entry = scorer._score_new(request, now_ms, None, None)
        # Its state update waits in the backlog (backlog.py), durably, and is kept BEFORE the
        # decision is logged, as a Redis commit precedes the append: a retry that finds the
        # logged answer answers it without scoring, so a worker killed between the append and
        # the backlog entry would lose the update for good. Kept for a replayed answer too:
        # applying is idempotent (whichever copy's record lands first, the rest are EXISTS).
        kept = False  # by this request (not already by another for the same event_id)

        def keep_update(finished: IdempotencyEntry) -> None:
            nonlocal kept
            record = encode_stored(_stored(finished, ids))
            kept = scorer.backlog.add(DegradedEvent.hashed(request, record, ids, shared.hash))

        try:
            return _answer(scorer, entry, request, started, before_log=keep_update)
        except BaseException:  # not answered (409, log failure): not counted either
            if kept:
                scorer.backlog.discard(request.event_id)
            raise
    return _answer(scorer, entry, request, started)


def apply_degraded(scorer: Scorer, item: DegradedEvent) -> str:
    """The state update of an event answered degraded, once Redis is back: 'OK', or 'EXISTS'
    when a retry was scored meanwhile. Its idempotency record holds the degraded answer, so a
    later retry answers what was logged. Raises StoreUnavailable while Redis is still down.
    The item's identifiers are hashed already: the engine takes them as they are."""
    shared = scorer.shared
    assert shared is not None
    idem_key = shared.idempotency_key(item.event_id)
    event_ms = int(item.event["timestamp_ms"])
    for _ in range(MAX_ATTEMPTS):
        with scorer.lock:
            txn = shared.begin(idem_key, shared.hashed_keys_for(item.ids))
            if txn.existing is not None:
                return "EXISTS"
            engine = OnlineFeatureEngine(TransactionStore(shared, txn))
            if item.account is not None:
                engine.ingest_profile(item.account)
            if item.kind != "credit_application":
                engine.update(item.event)
            outcome = shared.commit(txn, item.record, shared.idempotency_ttl_ms, event_ms)
        if outcome != "CONFLICT":
            return "OK" if outcome == "OK" else "EXISTS"
    raise StoreUnavailable(f"event {item.event_id!r}: the state kept changing")


def _stored(entry: IdempotencyEntry, hashed_ids: dict[str, str]) -> StoredDecision:
    return StoredDecision(
        body_hash=entry.body_hash,
        created_ms=entry.created_ms,
        response=entry.response,
        entities={k: hashed_ids[k] for k in LABEL_KINDS if k in hashed_ids},
        x=None if entry.x is None else entry.x.tolist(),
        credit_x=None if entry.credit_x is None else entry.credit_x.tolist(),
    )


def _answer(
    scorer: Scorer,
    entry: IdempotencyEntry,
    request: ScoreRequest,
    started: float,
    before_log: Callable[[IdempotencyEntry], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Reasons, the durable log append, then the response, and whether it is a replay.

    When the log already held this event_id (another copy of the request was logged
    first, e.g. degraded while this one committed, or the reverse), the logged answer is
    what was acknowledged: this copy answers that.
    """
    scorer._finish(entry, request, started)
    if entry.record is None:
        raise RuntimeError(f"event {request.event_id!r} could not be scored")
    if before_log is not None:  # the degraded path's durable state update (score_shared)
        before_log(entry)
    if not scorer.log.append(entry.record):
        logged = scorer.logged_or_none(request.event_id)
        if logged is not None and logged.response is not None:
            return {**logged.response, "timing_ms": _ms_since(started)}, True
    response = dict(entry.response)
    response["timing_ms"] = _ms_since(started)
    return response, False


def _replay(
    scorer: Scorer, request: ScoreRequest, stored: StoredDecision, started: float
) -> dict[str, Any]:
    """A retry: the logged answer, or (when the first request never logged it) a take-over."""
    if stored.body_hash != request.canonical_body_hash:
        raise Conflict(
            f"event_id {request.event_id!r} was already scored with a different body",
            field="event_id",
        )
    # The first request had takeover_ms from its start to log its answer: wait out only what
    # is left of it. An older record was logged or never will be (PostgreSQL away, or the
    # first request's worker killed), and waiting longer cannot change that.
    left_ms = stored.created_ms + scorer.settings.takeover_ms - time.time() * 1000.0
    takeover_at = time.perf_counter() + max(0.0, left_ms) / 1000.0
    while True:
        logged = scorer.logged_or_none(request.event_id)
        if logged is not None and logged.response is not None:
            response = dict(logged.response)
            if request.explain and response.get("fraud") and stored.x is not None:
                x = np.asarray(stored.x, dtype=np.float64)
                response = scorer._with_approval_reasons(response, x)
            response["timing_ms"] = _ms_since(started)
            return response
        if time.perf_counter() >= takeover_at:
            break
        if not wait_for_turn():  # a twin parked in this turn of the loop: its commit first
            time.sleep(POLL_S)
    return _answer(scorer, _takeover_entry(scorer, request, stored), request, started)[0]


def _takeover_entry(
    scorer: Scorer, request: ScoreRequest, stored: StoredDecision
) -> IdempotencyEntry:
    """The committed decision rebuilt from its idempotency record, to be finished and logged."""
    response = dict(stored.response)
    x = None if stored.x is None else np.asarray(stored.x, dtype=np.float64)
    credit_x = None if stored.credit_x is None else np.asarray(stored.credit_x, dtype=np.float64)
    models = scorer.models
    same_models = models.versions() == response.get("model_versions")
    if x is not None:
        features = _named(FEATURE_NAMES, x)
    elif credit_x is not None:
        features = _named(CREDIT_FEATURE_NAMES, credit_x)
    else:
        features = {}
    complete = response.get("decision") != "approve" or request.explain
    return IdempotencyEntry(
        stored.body_hash,
        response,
        None,
        dict(request.event),
        stored.created_ms,
        x=x if same_models else None,  # reasons only from the models that decided
        reasons_complete=complete,
        features=features,
        models=models,
        credit_x=credit_x if same_models else None,
    )


def _named(names: tuple[str, ...], x: np.ndarray) -> dict[str, float | None]:
    from risk_service.scoring import _features_dict

    return _features_dict(names, x)


def ingest_label_shared(
    scorer: Scorer, event_id: str, label_time: Any, hashed_entities: Mapping[str, str]
) -> str:
    """A fraud label into the shared state, once: the label's own key is the idempotency key
    of its transaction. Entities come from the idempotency record, else from the log's hashes."""
    shared = scorer.shared
    assert shared is not None
    stored = shared.stored_decision(event_id)
    entities = stored.entities if stored is not None else dict(hashed_entities)
    entities = {k: h for k, h in entities.items() if k in LABEL_KINDS and h}
    if not entities:
        return "unknown"
    keys = shared.hashed_keys_for(entities)
    as_event = {ENTITY_KEYS[kind]: h for kind, h in entities.items()}
    label_key = shared.label_key(event_id, "is_fraud")
    for _ in range(MAX_ATTEMPTS):
        txn = shared.begin(label_key, keys)
        if txn.existing is not None:
            return "duplicate"
        OnlineFeatureEngine(TransactionStore(shared, txn)).ingest_label(as_event, 1, label_time)
        outcome = shared.commit(txn, b"1", LABEL_HORIZON_MS, None)
        if outcome == "OK":
            return "applied"
        if outcome == "EXISTS":
            return "duplicate"
    raise StoreUnavailable(f"label of {event_id!r}: the state kept changing, try again")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _answered_before(
    scorer: Scorer, request: ScoreRequest, started: float
) -> dict[str, Any] | None:
    """The logged answer to this event_id, if the log can tell; Conflict for another body."""
    logged = scorer.logged_or_none(request.event_id)
    if logged is None or logged.response is None:
        return None
    if logged.body_hash != request.canonical_body_hash:
        raise Conflict(
            f"event_id {request.event_id!r} was already scored with a different body",
            field="event_id",
        )
    return {**logged.response, "timing_ms": _ms_since(started)}
