"""Prometheus metrics of the service: requests, decisions, scores, versions, stores, auth.

Every metric is defined here, once, at import; callers use the small functions below
(`observe_score`, `observe_store`, `store_error`, …), never the metric objects. No Flask here:
the scoring core and the stores may call these; `risk_service.web` serves `/metrics`.

**Several processes.** gunicorn runs several worker processes; each would count only its own
requests. With ``PROMETHEUS_MULTIPROC_DIR`` set (before this module is imported: `risk serve`
sets it to a fresh directory) prometheus_client keeps the values in files there and `render`
adds up every process's files; `risk_service.gunicorn_conf` clears the directory when gunicorn
starts and drops a dead worker's live gauges. Without the variable (one process, tests), the
default registry is used.

**No personal data in labels.** Labels are route rules, outcomes, model and policy versions,
store and operation names: never account, device, event ids or addresses.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values

# The `_created` timestamp series double the exposition and no dashboard here uses them.
disable_created_metrics()
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# In multiprocess mode every increment and observation first asks for the process id (to
# start its own files after a fork): `os.getpid()`, a system call, three a request in the
# worker. The id is kept here instead and renewed in every child a fork makes.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


def process_id() -> int:
    """This process's id, as `os.getpid()` returns it, without the system call."""
    return _pid


os.register_at_fork(after_in_child=_renew_pid)
if MULTIPROCESS:  # before the first metric below is made
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(process_id)

# Request latency: /score answers in about 0.3 ms, so the buckets are fine between 0.5 and 50 ms.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# Store calls: an in-memory or Redis call takes tens of microseconds, a commit milliseconds.
STORE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# Fraud scores are integers 0-99; `le` is inclusive, so 4, 9, … 99 are five-point steps whose
# edges include the band limits (low < 50 ≤ medium < 75 ≤ high < 90 ≤ very_high).
SCORE_BUCKETS = tuple(float(b) for b in range(4, 100, 5))

KINDS = ("payment", "credit_application")
DECISIONS = ("approve", "challenge", "review", "decline")
AUTH_FAILURE_REASONS = ("missing", "malformed", "unknown", "scope", "blocked", "not_loopback")

REQUEST_SECONDS = Histogram(
    "risk_http_request_duration_seconds",
    "Time from the first to the last request hook, by route rule",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "risk_http_requests",
    "HTTP requests answered, by route rule, method and status",
    ["endpoint", "method", "status"],
)
DECISIONS_TOTAL = Counter(
    "risk_decisions", "Decisions answered by /score (replays excluded)", ["kind", "decision"]
)
FRAUD_SCORE = Histogram(
    "risk_fraud_score", "Fraud score (0-99) of scored payments", buckets=SCORE_BUCKETS
)
DEGRADED = Counter(
    "risk_degraded_answers", "Answers given degraded (rules only, fail mode)", ["kind"]
)
LATE = Counter("risk_late_events", "Events scored later than MAX_LATENESS_SECONDS")
REPLAYS = Counter("risk_idempotent_replays", "Repeated event_ids answered from the stored decision")
AUTH_FAILURES = Counter(
    "risk_auth_failures", "Requests refused by authentication or authorisation", ["reason"]
)
STORE_SECONDS = Histogram(
    "risk_store_duration_seconds",
    "Duration of store operations",
    ["store", "operation"],
    buckets=STORE_BUCKETS,
)
STORE_ERRORS = Counter("risk_store_errors", "Failed store operations", ["store", "operation"])
BREAKER_OPENS = Counter(
    "risk_store_breaker_opens", "Times a store's circuit breaker opened", ["store"]
)
CLIENT_TIMEOUTS = Counter(
    "risk_client_timeouts",
    "Connections closed without a whole request within RISK_CLIENT_TIMEOUT_SECONDS, by what "
    "had arrived (idle: nothing; partial: part of a request, answered 408)",
    ["state"],
)
MODEL_INFO = Gauge(
    "risk_model_info",
    "1 for the model version being served, by kind (fraud, credit)",
    ["kind", "version"],
    multiprocess_mode="livemax",
)
POLICY_INFO = Gauge(
    "risk_policy_info",
    "1 for the policy version being served",
    ["version"],
    multiprocess_mode="livemax",
)

STATE_ENTITIES = Gauge(
    "risk_state_entities",
    "Entities in the in-memory feature state, by kind and tier (live: a whole state; dormant: "
    "only the last event kept), as of the last sweep of idle entities",
    ["kind", "tier"],
    multiprocess_mode="livesum",
)
STATE_FORGOTTEN = Counter(
    "risk_state_forgotten", "Entity states forgotten by the in-memory store as idle", ["kind"]
)
IDEMPOTENCY_RECORDS = Gauge(
    "risk_idempotency_records",
    "Idempotency records in memory, by tier (whole; settled: event_ids in a Bloom filter, "
    "their answers in the decision log), "
    "as of the last sweep of idle entities",
    ["tier"],
    multiprocess_mode="livesum",
)
SETTLED_LOOKUPS = Counter(
    "risk_idempotency_settled_lookups",
    "In-memory state: event_ids the settled filter recognised, looked up in the decision log, "
    "by what the log held (retry: answered from it; new: a false positive, scored; "
    "unreadable: scored)",
    ["found"],
)
LOG_COMMIT_ROWS = Histogram(
    "risk_decision_log_commit_rows",
    "Rows (decisions and labels) per commit of the decision log: a group commit of "
    "concurrent threads, or of the requests of one turn of a one-thread worker's event loop",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512),
)
STATE_SNAPSHOTS = Counter(
    "risk_state_snapshots",
    "In-memory state written for the next start by a forked copy of the worker, every "
    "STATE_SNAPSHOT_INTERVAL_SECONDS (ok, or failed: the previous file stays)",
    ["result"],
)

# Children bound once: `labels()` takes a lock and builds a tuple on every call.
_DECISION = {(k, d): DECISIONS_TOTAL.labels(k, d) for k in KINDS for d in DECISIONS}
_DEGRADED = {k: DEGRADED.labels(k) for k in KINDS}
_AUTH = {r: AUTH_FAILURES.labels(r) for r in AUTH_FAILURE_REASONS}
_bound: dict[tuple[Any, ...], Any] = {}
_versions: dict[str, str | None] = {}
_versions_lock = threading.Lock()


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _bound.get(key)
    if child is None:
        child = _bound.setdefault(key, metric.labels(*labels))
    return child


# -- the request path ----------------------------------------------------------------------
def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """One answered request; `endpoint` is the route rule (``/decisions/<event_id>``) or
    ``unmatched``, never the raw path."""
    _child(REQUEST_SECONDS, endpoint).observe(seconds)
    _child(REQUESTS, endpoint, method, str(status)).inc()


def observe_score(
    response: Mapping[str, Any], *, kind: str | None = None, replayed: bool = False
) -> None:
    """Count one /score answer (the JSON body `Scorer.score` returns).

    `kind` is ``payment`` or ``credit_application`` (the validated request's kind); when not
    given it is read from the body: a credit block whose limit check holds ``requested_limit``
    is a credit application. A replayed event_id (`replayed`) counts only as a replay: its
    decision was counted when it was made.
    """
    if replayed:
        REPLAYS.inc()
        return
    if kind is None:
        credit = response.get("credit") or {}
        kind = (
            "credit_application"
            if response.get("fraud") is None and "requested_limit" in credit.get("limit_check", ())
            else "payment"
        )
    decision = str(response.get("decision"))
    child = _DECISION.get((kind, decision))
    (child if child is not None else _child(DECISIONS_TOTAL, kind, decision)).inc()
    fraud = response.get("fraud")
    if fraud is not None and fraud.get("score") is not None:
        FRAUD_SCORE.observe(fraud["score"])
    if response.get("degraded"):
        (_DEGRADED.get(kind) or _child(DEGRADED, kind)).inc()
    if response.get("late"):
        LATE.inc()
    versions = response.get("model_versions") or {}
    if (
        versions.get("fraud") != _versions.get("fraud")
        or versions.get("credit") != _versions.get("credit")
        or response.get("policy_version") != _versions.get("policy")
    ):
        set_versions(versions, response.get("policy_version"))


def idempotent_replay() -> None:
    """One /score answered from the stored decision of its event_id."""
    REPLAYS.inc()


def auth_failure(reason: str) -> None:
    """One request refused: missing, malformed, unknown, scope, blocked or not_loopback."""
    (_AUTH.get(reason) or _child(AUTH_FAILURES, reason)).inc()


def set_versions(model_versions: Mapping[str, str | None], policy_version: str | None) -> None:
    """The model and policy versions served now (1); a replaced version drops to 0."""
    with _versions_lock:
        for kind in ("fraud", "credit"):
            _swap(MODEL_INFO, (kind,), _versions.get(kind), model_versions.get(kind))
            _versions[kind] = model_versions.get(kind)
        _swap(POLICY_INFO, (), _versions.get("policy"), policy_version)
        _versions["policy"] = policy_version


def _swap(gauge: Gauge, labels: tuple[str, ...], old: str | None, new: str | None) -> None:
    if old == new:
        return
    if old is not None:
        gauge.labels(*labels, old).set(0)
    if new is not None:
        gauge.labels(*labels, new).set(1)


# -- stores ------------------------------------------------------------------------------
def observe_store(store: str, op: str, seconds: float) -> None:
    """One store operation took `seconds`: `store` e.g. ``redis``, ``postgres``, ``sqlite``;
    `op` e.g. ``get``, ``update``, ``append``, ``commit``. Constants only, never ids."""
    _child(STORE_SECONDS, store, op).observe(seconds)


def breaker_opened(store: str) -> None:
    """A store's circuit breaker opened: answers degrade until a trial call succeeds."""
    _child(BREAKER_OPENS, store).inc()


def store_error(store: str, op: str) -> None:
    """One store operation failed (count it where the error is caught or raised)."""
    _child(STORE_ERRORS, store, op).inc()


@contextmanager
def timed_store(store: str, op: str) -> Iterator[None]:
    """``with timed_store("redis", "get"): ...``: the duration, and an error if it raises."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        store_error(store, op)
        raise
    finally:
        observe_store(store, op, time.perf_counter() - started)


# -- the in-memory state -------------------------------------------------------------------
def observe_state(
    counts: Mapping[str, tuple[int, int]], forgotten: Mapping[str, int], records: tuple[int, int]
) -> None:
    """After a sweep: (live, dormant) entities per kind, how many each kind just forgot, and
    the idempotency records (whole, settled)."""
    for kind, (live, dormant) in counts.items():
        _child(STATE_ENTITIES, kind, "live").set(live)
        _child(STATE_ENTITIES, kind, "dormant").set(dormant)
    for kind, n in forgotten.items():
        if n:
            _child(STATE_FORGOTTEN, kind).inc(n)
    _child(IDEMPOTENCY_RECORDS, "whole").set(records[0])
    _child(IDEMPOTENCY_RECORDS, "settled").set(records[1])


def settled_lookup(found: str) -> None:
    """A settled-filter hit looked up in the log: ``retry``, ``new`` or ``unreadable``."""
    _child(SETTLED_LOOKUPS, found).inc()


def log_commit(rows: int) -> None:
    """One commit of the decision log (SQLite or PostgreSQL) of ``rows`` rows."""
    LOG_COMMIT_ROWS.observe(rows)


def state_snapshot(result: str) -> None:
    """A periodic snapshot of the in-memory state: ``ok`` or ``failed``."""
    _child(STATE_SNAPSHOTS, result).inc()


# -- connections -------------------------------------------------------------------------
def client_timed_out(state: str) -> None:
    """The gunicorn worker closed a connection that sent no whole request in time:
    ``idle`` (nothing) or ``partial`` (answered 408)."""
    _child(CLIENT_TIMEOUTS, state).inc()


# -- exposition ------------------------------------------------------------------------------
def render() -> tuple[bytes, str]:
    """The exposition text and its content type: all processes' values in multiprocess mode."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample's value in this process (tests, debugging); 0 when it has none yet."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return 0.0 if value is None else value
