"""The scoring core: validated request -> online features -> models -> policy -> decision.

No Flask and no HTTP here. One lock guards the online state and the idempotency
records, so an event's features, its state update and its idempotency record
form one atomic step; the decision log append happens outside the lock (so
concurrent requests share fsyncs) but before the answer is returned.

Order and lateness (docs/architecture.md, "Late and out-of-order events"):
events are applied in arrival order. An event whose timestamp is more than
`max_lateness_ms` older than the newest timestamp seen is *late*: it is scored
on the current state, flagged `late: true`, and still applied to the state so
that later events count it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from risk_service import explain, metrics, turns
from risk_service.backlog import Backlog, DegradedEvent
from risk_service.backlog_file import BacklogFile
from risk_service.credit_model import CreditModel, recommended_limit, score_from_pd
from risk_service.decision_log import DecisionLog, DecisionLogError, DecisionRecord
from risk_service.errors import Conflict
from risk_service.features import (
    CREDIT_FEATURE_NAMES,
    FEATURE_NAMES,
    MemoryStateStore,
    OnlineFeatureEngine,
    request_time_features,
)
from risk_service.features.expiry import LABEL_HORIZON_MS
from risk_service.features.online import profile_from_row
from risk_service.features.spec import ENTITY_KEYS, LABEL_KINDS
from risk_service.fraud_model import FraudModel
from risk_service.idempotency import (
    SETTLED,
    AppliedLabels,
    IdempotencyEntry,
    MemoryIdempotencyStore,
)
from risk_service.policy import SEVERITY, Policy
from risk_service.redis_state import RedisState, StoreUnavailable
from risk_service.requests import ScoreRequest
from risk_service.scores import decide, fraud_band, fraud_score

if TYPE_CHECKING:
    from risk_service import snapshot
    from risk_service.lifecycle import Shadow

log = logging.getLogger("risk_service.scoring")
_FRAUD_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_CREDIT_INDEX = {name: i for i, name in enumerate(CREDIT_FEATURE_NAMES)}
# The in-memory state forgets idle entities as event time advances (`features/expiry.py`):
# a sweep a minute of event time, at most SWEEP_LIMIT entities per request (forgetting one
# costs ~12 µs, freeing its buckets: measured 1.2 ms p50, 4.5 ms max per 100 when many are due).
SWEEP_EVERY_MS = 60_000
SWEEP_LIMIT = 100


def next_sweep_ms(now_ms: int, forgotten: Mapping[str, int]) -> int:
    """When to sweep next after one that forgot ``forgotten``: at the limit more are due,
    so on the next event; else a minute of event time on."""
    return now_ms + (0 if sum(forgotten.values()) >= SWEEP_LIMIT else SWEEP_EVERY_MS)


def logged_entities(record: DecisionRecord) -> dict[str, str]:
    """The entities a fraud label reaches (`LABEL_KINDS`), as the logged event names them:
    by their keyed hashes."""
    event = record.request.get("event") or {}
    hashed = {kind: event.get(ENTITY_KEYS[kind]) for kind in LABEL_KINDS}
    return {kind: h for kind, h in hashed.items() if isinstance(h, str) and h}


class FeatureView(Mapping[str, float]):
    """Feature values by name over a vector, without building a dict per request."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: np.ndarray, index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, name: str) -> float:
        return float(self._values[self._index[name]])

    def get(self, name: str, default: Any = None) -> Any:
        """Mapping.get without its exception round trip: policies call it per clause."""
        i = self._index.get(name)
        return default if i is None else float(self._values[i])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True)
class LoadedModels:
    """The champion models serving now; replaced as a whole, never mutated."""

    fraud: FraudModel | None
    credit: CreditModel | None

    def versions(self) -> dict[str, str | None]:
        return {
            "fraud": self.fraud.version if self.fraud else None,
            "credit": self.credit.version if self.credit else None,
        }


@dataclass(frozen=True)
class ScoringSettings:
    max_lateness_ms: int = 5 * 60 * 1000
    deadline_ms: float = 50.0  # a shared-store transaction gives up (degraded) after this
    takeover_ms: float = 1000.0  # a retry finishes a committed, unlogged decision after this
    reasons_method: str = "treeshap"  # "path" | "treeshap": how fraud reasons get contributions
    credit_approve_max_pd: float = 0.2
    credit_decline_min_pd: float = 0.4


class Scorer:
    """Scores events against the loaded models and policy, with state, idempotency and a log."""

    def __init__(
        self,
        *,
        engine: OnlineFeatureEngine,
        models: LoadedModels,
        policy: Policy,
        log: DecisionLog,
        idempotency: MemoryIdempotencyStore,
        settings: ScoringSettings | None = None,
        shared: RedisState | None = None,
        backlog_dir: str | Path | None = None,
    ) -> None:
        """``backlog_dir``: where the degraded-event backlog is kept durably (with ``shared``;
        None: in memory only, lost with the process)."""
        self.engine = engine
        self.shared = shared
        self.shadow: Shadow | None = None  # challengers scored beside the champion, never acting
        # degraded events waiting for Redis; what dead processes left is taken over at start
        file = BacklogFile(backlog_dir) if shared is not None and backlog_dir else None
        self.backlog = Backlog(self._apply_degraded, file=file)
        self.models = models
        self.policy = policy
        self.log = log
        self.idempotency = idempotency
        self.settings = settings or ScoringSettings()
        self.lock = threading.Lock()
        self.applied_labels = AppliedLabels(LABEL_HORIZON_MS)
        self.snapshot_to: tuple[Path, str] | None = None  # where a stop writes the state, key check
        self.closed = False
        self.watermark_ms = -(2**62)
        self._sweep_at_ms = -(2**62)  # event time of the next sweep of idle entities
        if file is not None:
            self.backlog.start()  # adopt what dead processes left, and apply it

    # -- the request path ------------------------------------------------------------------
    def score(self, request: ScoreRequest) -> dict[str, Any]:
        """The response for one validated request; raises Conflict (409) on a reused event_id."""
        return self.score_request(request)[0]

    def score_request(self, request: ScoreRequest) -> tuple[dict[str, Any], bool]:
        """The response, and whether it is a replay (the event_id was scored before)."""
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        event_id = request.event_id
        created = False
        if self.shared is not None:
            from risk_service.scoring_shared import score_shared

            return score_shared(self, request, started, now_ms)
        with self.lock:
            found = self.idempotency.get(event_id, now_ms)
            if found is not SETTLED:
                entry, created = self._found_or_new(found, request, now_ms)
        if found is SETTLED:  # past the memory window, or (~1%) a filter's false positive
            settled = self._logged_within_ttl(event_id, now_ms)  # a read of the log, unlocked
            if settled is not None:
                return self._replay_settled(settled, request, started), True
            with self.lock:  # not logged: a new event (unless scored meanwhile by a twin)
                found = self.idempotency.get(event_id, now_ms)
                entry, created = self._found_or_new(found, request, now_ms)
        if entry.body_hash != request.canonical_body_hash:
            raise Conflict(
                f"event_id {event_id!r} was already scored with a different body",
                field="event_id",
            )
        if created:
            # Outside the lock: TreeSHAP costs milliseconds and releases the GIL, so other
            # requests' state updates proceed meanwhile.
            self._finish(entry, request, started)
        elif not turns.wait_ready(entry.ready, timeout=10.0):
            raise RuntimeError(f"event {event_id!r} is still being scored by another request")
        if entry.record is None and not entry.logged:  # finishing failed (it raised)
            raise RuntimeError(f"event {event_id!r} could not be scored")
        if not entry.logged:  # also a retry of a decision whose log append failed
            assert entry.record is not None
            if not self.log.append(entry.record):  # logged before: by a previous process
                created = not self._adopt_logged_answer(entry, event_id)
            entry.mark_logged()
        response = dict(entry.response)
        if request.explain and not entry.reasons_complete and entry.x is not None:
            response = self._with_approval_reasons(response, entry.x)
        response["timing_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return response, not created

    def _forget_idle(self) -> None:
        """Forget the state of entities idle past their retention as of the oldest time an
        event that is not late may have, so no such event's features change (a late one,
        scored on the current state anyway, may see a forgotten entity as new)."""
        horizon = self.watermark_ms - self.settings.max_lateness_ms
        forgotten = self.engine.forget_idle(horizon, SWEEP_LIMIT)
        self._sweep_at_ms = next_sweep_ms(self.watermark_ms, forgotten)
        store = self.engine.store
        if isinstance(store, MemoryStateStore):
            idem = self.idempotency
            metrics.observe_state(
                store.counts(), forgotten, (idem.whole(), len(idem) - idem.whole())
            )

    def save_snapshot(self, path: str | Path, key_check: str) -> int:
        """In memory: write the state for the next start (`snapshot.py`); returns the live
        entity states written (0: nothing to write, on Redis)."""
        from risk_service import snapshot

        with self.lock:  # no request changes the state meanwhile
            state = self.state_snapshot(key_check)
            if state is None:
                return 0
            snapshot.write(path, state)
            return sum(live for live, _ in state.store.counts().values())

    def state_snapshot(self, key_check: str) -> snapshot.StateSnapshot | None:
        """Under the lock: what a snapshot holds (the live objects, not a copy), or None on
        Redis."""
        from risk_service import snapshot

        store = self.engine.store
        if self.shared is not None or not isinstance(store, MemoryStateStore):
            return None
        return snapshot.StateSnapshot(
            store=store,
            watermark_ms=self.watermark_ms,
            sweep_at_ms=self._sweep_at_ms,
            applied_labels=self.applied_labels,
            key_check=key_check,
        )

    def load_snapshot(
        self,
        path: str | Path,
        key_check: str,
        key_hash: Callable[[str], str],
        *,
        remove: bool = True,
    ) -> int:
        """In memory, at start: the state last written, if any (the file removed if
        ``remove``); returns the live entity states read."""
        from risk_service import snapshot

        if self.shared is not None:
            return 0
        found = snapshot.take(path, key_check, remove=remove)
        if found is None:
            return 0
        found.store.attach_hash(key_hash)
        with self.lock:
            self.engine = OnlineFeatureEngine(found.store, self.engine.key_hash)
            self.watermark_ms = found.watermark_ms
            self._sweep_at_ms = found.sweep_at_ms
            self.applied_labels = found.applied_labels
        return sum(live for live, _ in found.store.counts().values())

    def recall_recent(self, seconds: float, limit: int) -> int:
        """In memory, at start: the events the log holds from the last ``seconds`` (at most
        ``limit``) become idempotency records again (settled: answered from the log), so the
        retries that follow a restart are not scored anew. Returns how many."""
        if self.shared is not None or seconds <= 0 or limit <= 0:
            return 0
        since_ms = int(time.time() * 1000) - int(seconds * 1000)
        try:
            recent = self.log.recent(since_ms, limit)
        except DecisionLogError:  # PostgreSQL away at start: retries get the logged answer
            log.warning("decision log unreadable at start: no recent decisions recalled")
            return 0
        with self.lock:
            for event_id, created_ms in recent:
                self.idempotency.recall(event_id, created_ms)
        return len(recent)

    def _adopt_logged_answer(self, entry: IdempotencyEntry, event_id: str) -> bool:
        """The log already held this event_id with this body: an answer given before this
        process knew the event (scored before a restart, whose in-memory records went with
        the old process). That answer was acknowledged, so it is the answer, now and to any
        retry; True once adopted. (This process's state has counted the event once.)"""
        logged = self.logged_or_none(event_id)
        if logged is None or logged.response is None:
            return False
        entry.response = dict(logged.response)
        entry.reasons_complete = True
        entry.x = None  # approval reasons only from the features that decided (the log's)
        return True

    def logged_or_none(self, event_id: str) -> DecisionRecord | None:
        """The logged decision, or None when the log has none or cannot say right now
        (PostgreSQL away): callers then answer, wait or take over, all of them idempotently."""
        try:
            return self.log.get(event_id)
        except DecisionLogError:
            return None

    def _found_or_new(
        self, found: IdempotencyEntry | str | None, request: ScoreRequest, now_ms: int
    ) -> tuple[IdempotencyEntry, bool]:
        """Under the lock: the whole entry found, or the event scored and recorded now (True)."""
        if isinstance(found, IdempotencyEntry):
            return found, False
        entry = self._score_new(request, now_ms, self.engine, self.watermark_ms)
        self.watermark_ms = max(self.watermark_ms, request.timestamp_ms)
        self.idempotency.put(request.event_id, entry)
        if self.watermark_ms >= self._sweep_at_ms:
            self._forget_idle()
        return entry, True

    def _logged_within_ttl(self, event_id: str, now_ms: int) -> DecisionRecord | None:
        """The logged decision of an event scored within the idempotency TTL, or None. With
        the log unreachable (PostgreSQL down, nothing in the spool) None too: the event is
        scored as new, which double-counts it only if it really was a retry of an event
        settled out of memory (`IDEMPOTENCY_MEMORY_EVENTS` ago), during the outage."""
        try:
            record = self.log.get(event_id)
        except DecisionLogError:
            log.warning("decision log unreadable: %s scored as a new event", event_id)
            metrics.settled_lookup("unreadable")
            return None
        created_ms = None if record is None else record.created_at_ms
        if created_ms is None or created_ms + self.idempotency.ttl_ms <= now_ms:
            metrics.settled_lookup("new")
            return None
        metrics.settled_lookup("retry")
        return record

    def _replay_settled(
        self, record: DecisionRecord, request: ScoreRequest, started: float
    ) -> dict[str, Any]:
        """A retry of an event past the memory window: the answer as the decision log keeps it,
        with approval reasons if asked for, from the features the log kept."""
        event_id = request.event_id
        if record.body_hash != request.canonical_body_hash:
            raise Conflict(
                f"event_id {event_id!r} was already scored with a different body",
                field="event_id",
            )
        if record.response is None:
            raise RuntimeError(f"event {event_id!r} was scored, but its answer is not in the log")
        response = dict(record.response)
        fraud = response.get("fraud")
        logged = record.features or {}
        asked = request.explain and fraud is not None and not fraud.get("reasons")
        if asked and _FRAUD_INDEX.keys() <= logged.keys():  # not a credit application's
            response = self._with_approval_reasons(response, _vector(logged, FEATURE_NAMES))
        response["timing_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return response

    def _score_new(
        self,
        request: ScoreRequest,
        now_ms: int,
        engine: OnlineFeatureEngine | None,
        watermark_ms: int | None,
    ) -> IdempotencyEntry:
        """Features, state update, scores, policy (reasons come later). ``engine`` None: the
        state store is unavailable, so the answer is degraded and no state changes."""
        event = request.event
        ts = request.timestamp_ms
        late = watermark_ms is not None and ts < watermark_ms - self.settings.max_lateness_ms
        if request.account is not None and engine is not None:
            engine.ingest_profile(request.account)
        models, policy = self.models, self.policy
        if request.kind == "credit_application":
            body, features, x, complete = self._credit_application(event, models, policy, engine)
        else:
            body, features, x, complete = self._payment(
                event, models, policy, engine, explain_all=request.explain
            )
        body.update(
            event_id=request.event_id,
            model_versions=models.versions(),
            policy_version=policy.version,
            late=late,
        )
        credit_x = (body.get("credit") or {}).pop("_x", None)
        return IdempotencyEntry(
            request.canonical_body_hash,
            body,
            None,
            dict(event),
            now_ms,
            x=x,
            reasons_complete=complete,
            features=features,
            models=models,
            credit_x=credit_x,
        )

    def _finish(self, entry: IdempotencyEntry, request: ScoreRequest, started: float) -> None:
        """Reasons for non-approve decisions (or on request), then the decision record."""
        try:
            body = entry.response
            fraud, credit = body.get("fraud"), body.get("credit")
            models = entry.models
            try:
                if fraud is not None and entry.reasons_complete and entry.x is not None:
                    fraud["reasons"] = self._fraud_reasons(models.fraud, entry.x)
                if credit is not None and entry.credit_x is not None and models.credit:
                    x_credit = entry.credit_x.reshape(1, -1)
                    contributions = turns.beside(models.credit.contributions, x_credit)[0]
                    credit["reasons"] = explain.top_reasons(
                        CREDIT_FEATURE_NAMES, entry.credit_x, contributions
                    )
            except Exception:  # the decision stands without its reasons; never a 500
                log.exception("reasons failed for event %s", request.event_id)
            entry.record = DecisionRecord(
                event_id=request.event_id,
                decision=body["decision"],
                body_hash=request.canonical_body_hash,
                request={
                    "event": request.event,
                    "account": request.account,
                    "explain": request.explain,
                },
                features=entry.features,
                fraud_probability=(fraud or {}).get("probability"),
                fraud_score=(fraud or {}).get("score"),
                credit_pd=(credit or {}).get("probability_of_default"),
                rules_fired=body["rules_fired"],
                reasons=((fraud or {}).get("reasons") or [])
                + ((credit or {}).get("reasons") or []),
                model_versions=body["model_versions"],
                policy_version=body["policy_version"],
                degraded=body["degraded"],
                latency_ms=(time.perf_counter() - started) * 1000,
                created_at_ms=entry.created_ms,
                response=body,
                shadow=None if self.shadow is None else self._shadow(self.shadow, request, entry),
            )
        finally:
            entry.models = None  # a swapped-out model must not live on in idempotency records
            entry.ready.set()

    def _payment(
        self,
        event: dict[str, Any],
        models: LoadedModels,
        policy: Policy,
        engine: OnlineFeatureEngine | None,
        *,
        explain_all: bool,
    ) -> tuple[dict[str, Any], dict[str, float | None], np.ndarray, bool]:
        degraded = False
        xc: np.ndarray | None = None
        try:
            if engine is None:
                raise StoreUnavailable("no state store")
            if event.get("funding_source") == "credit_line":  # as of before this payment
                xc = engine.credit_features(_as_application(event))
            x = engine.process(event)
        except Exception:  # a store failure: rules and request-time features only
            degraded = True
            xc = None
            x = request_time_features(event)
        view = FeatureView(x, _FRAUD_INDEX)
        fraud: dict[str, Any] | None = None
        model_decision: str | None = None
        if models.fraud is not None and not degraded:
            try:
                p = float(models.fraud.predict_proba(x.reshape(1, -1))[0])
                score = fraud_score(p)
                fraud = {"probability": p, "score": score, "band": fraud_band(score)}
                model_decision = decide(p, models.fraud.thresholds)
            except Exception:
                degraded = True
        if models.fraud is None:
            degraded = True
        outcome = policy.evaluate(event, view, model_decision)
        decision = outcome.decision
        rules = list(outcome.rules_fired)
        credit = None
        if xc is not None:
            credit, credit_rules = self._credit_for_payment(event, models, view, xc)
            rules += credit_rules
            for rule in credit_rules:
                if SEVERITY[rule["action"]] > SEVERITY[decision]:
                    decision = rule["action"]
        complete = decision != "approve" or explain_all
        if fraud is not None:
            fraud["reasons"] = []  # filled outside the lock when the decision needs them
        body = {
            "decision": decision,
            "fraud": fraud,
            "credit": credit,
            "rules_fired": rules,
            "degraded": degraded,
        }
        return body, _features_dict(FEATURE_NAMES, x), x, complete

    def _shadow(
        self, shadow: Shadow, request: ScoreRequest, entry: IdempotencyEntry
    ) -> dict[str, Any]:
        """What the challengers would have decided on the same features; logged, never acted on.

        Fraud or credit model and policy as the champions do, without the pay-later
        limit check (it does not depend on a model or a policy)."""
        try:
            models, policy = shadow.models, shadow.policy
            degraded = bool(entry.response.get("degraded"))
            result: dict[str, Any] = {
                "challengers": dict(shadow.challengers),
                "model_versions": models.versions(),
                "policy_version": policy.version,
            }
            model_decision = None
            view: FeatureView
            if request.kind == "credit_application":
                xc = _vector(entry.features, CREDIT_FEATURE_NAMES)
                view = FeatureView(xc, _CREDIT_INDEX)
                if models.credit is not None and not degraded:
                    pd_ = float(models.credit.predict_pd(xc.reshape(1, -1))[0])
                    result["credit_pd"] = pd_
                    model_decision = credit_decision(pd_, self.settings)
            else:
                x = entry.x
                view = FeatureView(x, _FRAUD_INDEX)
                if models.fraud is not None and not degraded:
                    p = float(models.fraud.predict_proba(x.reshape(1, -1))[0])
                    result["fraud_probability"] = p
                    result["fraud_score"] = fraud_score(p)
                    model_decision = decide(p, models.fraud.thresholds)
            outcome = policy.evaluate(request.event, view, model_decision)
            result["decision"] = outcome.decision
            result["rules_fired"] = [rule["name"] for rule in outcome.rules_fired]
            return result
        except Exception as exc:  # a challenger never affects the answer
            log.exception("shadow scoring failed for event %s", request.event_id)
            return {"error": type(exc).__name__}

    def _fraud_reasons(self, model: FraudModel | None, x: np.ndarray) -> list[dict[str, Any]]:
        if model is None:
            return []
        method = self.settings.reasons_method
        # milliseconds of TreeSHAP without the GIL: beside the event loop where there is one
        contributions = turns.beside(model.contributions, x.reshape(1, -1), method)[0]
        return explain.top_reasons(FEATURE_NAMES, x, contributions)

    def _with_approval_reasons(self, response: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
        """An approval asked for its reasons (`explain: true`) on a retry: from the model that
        scored it, if it still serves here (after a swap, the answer goes without them)."""
        models = self.models
        if response.get("fraud") is not None and models.versions() == response["model_versions"]:
            response["fraud"] = dict(response["fraud"])
            response["fraud"]["reasons"] = self._fraud_reasons(models.fraud, x)
        return response

    def _credit_for_payment(
        self, event: dict[str, Any], models: LoadedModels, view: FeatureView, xc: np.ndarray
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Credit risk of a payment funded by the pay-later line: PD and the limit check."""
        pd_ = None
        if models.credit is not None:
            pd_ = float(models.credit.predict_pd(xc.reshape(1, -1))[0])
        block, rules, decision = credit_for_payment(
            event, view, xc, pd_, models.credit, self.settings
        )
        if decision not in (None, "approve"):
            block["_x"] = xc  # adverse-action reasons are computed outside the lock
        return block, rules

    def _credit_application(
        self,
        event: dict[str, Any],
        models: LoadedModels,
        policy: Policy,
        engine: OnlineFeatureEngine | None,
    ) -> tuple[dict[str, Any], dict[str, float | None], None, bool]:
        store_ok = engine is not None
        if engine is not None:
            try:
                xc = engine.credit_features(event)
            except Exception:  # a store failure: the policy's fail mode decides
                store_ok = False
        if not store_ok:
            xc = np.full(len(CREDIT_FEATURE_NAMES), np.nan)
            xc[_CREDIT_INDEX["requested_limit"]] = float(event["requested_limit"])
        view = FeatureView(xc, _CREDIT_INDEX)
        degraded = models.credit is None or not store_ok
        credit = None
        model_decision = None
        if models.credit is not None and store_ok:
            pd_ = float(models.credit.predict_pd(xc.reshape(1, -1))[0])
            requested = float(event["requested_limit"])
            credit, model_decision = credit_block(
                pd_, models.credit, view["monthly_income"], requested, self.settings
            )
            if model_decision != "approve":
                credit["_x"] = xc  # adverse-action reasons are computed outside the lock
            credit["limit_check"] = {
                "requested_limit": float(event["requested_limit"]),
                "within_recommendation": credit["recommended_limit"]
                >= float(event["requested_limit"]),
            }
        outcome = policy.evaluate(event, view, model_decision)
        body = {
            "decision": outcome.decision,
            "fraud": None,
            "credit": credit,
            "rules_fired": list(outcome.rules_fired),
            "degraded": degraded,
        }
        return body, _features_dict(CREDIT_FEATURE_NAMES, xc), None, True

    def close(self) -> None:
        """Stop the backlog thread, close the decision log and the shared store's client."""
        self.closed = True  # periodic snapshots stop too
        self.backlog.stop()
        self.log.close()
        if self.shared is not None:
            self.shared.close()

    def _apply_degraded(self, item: DegradedEvent) -> str:
        from risk_service.scoring_shared import apply_degraded

        return apply_degraded(self, item)

    # -- feeding the online state ----------------------------------------------------------
    def ingest_label(
        self,
        event_id: str,
        is_fraud: int,
        label_time: Any,
        hashed_entities: Mapping[str, str] | None = None,
    ) -> str:
        """A fraud label for a scored event, effective at ``label_time``, applied once.

        Returns "applied", "duplicate" (this event's label was applied before),
        "ignored" (not a fraud label: only known frauds are counted) or "unknown"
        (the event's entities are not known here). The entities come from the event's
        idempotency record while it is whole; after (chargebacks come weeks after the
        payment), from the decision log, which names them by their keyed hashes, the keys
        the state is kept under (on Redis, and in memory for the label kinds):
        ``hashed_entities`` (`logged_entities` of the event's record), or read here.
        """
        if not is_fraud:
            return "ignored"
        if self.shared is not None:
            from risk_service.scoring_shared import ingest_label_shared

            if hashed_entities is None:
                hashed_entities = self._logged_entities(event_id)
            return ingest_label_shared(self, event_id, label_time, hashed_entities)
        with self.lock:
            now_ms = int(time.time() * 1000)
            if self.applied_labels.seen(event_id, now_ms):
                return "duplicate"
            entry = self.idempotency.get(event_id, now_ms)
            if isinstance(entry, IdempotencyEntry):
                self.engine.ingest_label(entry.event, is_fraud, label_time)
                self.applied_labels.add(event_id, now_ms)
                return "applied"
        if hashed_entities is None:  # a read of the log: outside the lock
            hashed_entities = self._logged_entities(event_id)
        with self.lock:
            now_ms = int(time.time() * 1000)
            if self.applied_labels.seen(event_id, now_ms):
                return "duplicate"
            if not self._ingest_label_by_hashes(hashed_entities, label_time):
                return "unknown"
            self.applied_labels.add(event_id, now_ms)
        return "applied"

    def _logged_entities(self, event_id: str) -> dict[str, str]:
        record = self.log.get(event_id)
        return {} if record is None else logged_entities(record)

    def _ingest_label_by_hashes(self, hashed: Mapping[str, str], label_time: Any) -> bool:
        """A label whose event left the idempotency records, to the entities the log names
        by their hashes; False if none is known that way (or the store is not keyed so)."""
        store = self.engine.store
        if not isinstance(store, MemoryStateStore):
            return False
        kinds = [k for k in LABEL_KINDS if hashed.get(k) and store.hashes(k)]
        if not kinds:
            return False
        event = {ENTITY_KEYS[k]: hashed[k] for k in kinds}
        OnlineFeatureEngine(store.by_stored_key()).ingest_label(event, 1, label_time)
        return True

    def ingest_profiles(
        self, accounts: Iterable[Mapping[str, Any]], marker: str | None = None
    ) -> int:
        """Accounts-table rows into the profile store (each replaces the account's profile).
        On Redis, ``marker`` names the load so that only the first worker makes it."""
        if self.shared is not None:
            pairs = ((a["account_id"], profile_from_row(a)) for a in accounts)
            return self.shared.put_profiles(pairs, marker=marker)
        n = 0
        with self.lock:
            for account in accounts:
                self.engine.ingest_profile(account)
                n += 1
        return n


def credit_decision(pd_: float, settings: ScoringSettings) -> str:
    """approve up to `credit_approve_max_pd`, decline from `credit_decline_min_pd`, else review."""
    if pd_ <= settings.credit_approve_max_pd:
        return "approve"
    if pd_ < settings.credit_decline_min_pd:
        return "review"
    return "decline"


def credit_block(
    pd_: float,
    model: CreditModel,
    monthly_income: float,
    requested: float,
    settings: ScoringSettings,
) -> tuple[dict[str, Any], str]:
    """The `credit` part of an answer for a PD, and the credit decision (reasons come later)."""
    points = score_from_pd(pd_)
    block: dict[str, Any] = {
        "probability_of_default": pd_,
        "score": round(points, 1),
        "band": model.band(points),
        "recommended_limit": recommended_limit(pd_, monthly_income, requested),
        "reasons": [],
    }
    return block, credit_decision(pd_, settings)


def credit_for_payment(
    event: Mapping[str, Any],
    view: Mapping[str, float],
    xc: np.ndarray,
    pd_: float | None,
    model: CreditModel | None,
    settings: ScoringSettings,
) -> tuple[dict[str, Any], list[dict[str, str]], str | None]:
    """A pay-later payment: the limit check, the credit block (with `pd_` when there is a credit
    model) and the rules they fire; the service and backtests both call this."""
    limit = view["credit_limit"]
    used = _nan_to_zero(float(xc[_CREDIT_INDEX["account_credit_line_amount_30d"]]))
    available = (limit - used) if not math.isnan(limit) else None
    within = available is not None and event["amount"] <= available
    check = {
        "credit_limit": None if math.isnan(limit) else limit,
        "used_30d": used,
        "available": available,
        "within_limit": within,
    }
    rules: list[dict[str, str]] = []
    if not within:
        rules.append(
            {
                "name": "credit_limit_exceeded",
                "action": "decline",
                "reason": "the amount exceeds the available pay-later credit",
            }
        )
    if model is None or pd_ is None:
        return {"limit_check": check, "reasons": []}, rules, None
    block, decision = credit_block(pd_, model, view["monthly_income"], event["amount"], settings)
    block["limit_check"] = check
    if decision != "approve":
        rules.append(
            {
                "name": "credit_risk",
                "action": "review" if decision == "review" else "decline",
                "reason": f"probability of default {pd_:.1%}",
            }
        )
    return block, rules, decision


def _as_application(event: Mapping[str, Any]) -> dict[str, Any]:
    """A credit-line payment seen as a request for that much credit."""
    return {
        "account_id": event["account_id"],
        "timestamp": event["timestamp"],
        "requested_limit": event["amount"],
    }


def _nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _vector(features: Mapping[str, float | None], names: tuple[str, ...]) -> np.ndarray:
    """A feature vector in ``names`` order from values by name (None or absent: NaN), as a
    decision record keeps them."""
    values = (features.get(name) for name in names)
    return np.fromiter((math.nan if v is None else v for v in values), np.float64, len(names))


def _features_dict(names: tuple[str, ...], x: np.ndarray) -> dict[str, float | None]:
    """Feature name -> value for the log; a missing value stays NaN here, which the log's
    JSON (orjson) writes as null, so a logged record reads it back as None."""
    return dict(zip(names, x.tolist(), strict=True))
