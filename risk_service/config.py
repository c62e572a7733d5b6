"""Service settings: defaults here, overridden by RISK_-prefixed environment variables, then by
the mapping a caller (or a test) passes to `create_app`.

Environment values are parsed as JSON where they parse (RISK_MAX_BODY_BYTES=65536
is a number), else taken as strings (RISK_MODELS_DIR=models).
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    # where the champion bundles and registry live
    "MODELS_DIR": "models",
    # how often each worker re-reads the registry for new champions, challengers and policy
    # (0: never; the swap happens only after full verification)
    "RELOAD_INTERVAL_SECONDS": 2.0,
    # the policy file (TOML); None means the packaged default policy
    "POLICY_FILE": None,
    # embedded decision log (SQLite, WAL). NORMAL: an acknowledged decision survives a crash of
    # the process; FULL: also of the OS or the power, at an fsync per group commit (~1-3 ms here)
    "DECISION_LOG_PATH": "var/decisions.sqlite",
    "DECISION_LOG_SYNC": "NORMAL",
    # the decision log on PostgreSQL (postgresql://...); None: SQLite at DECISION_LOG_PATH.
    # A decision PostgreSQL cannot take within the timeout is made durable in a local spool
    # (SQLite, one file per process, in DECISION_LOG_SPOOL_DIR) and flushed when it is back.
    # The degraded-event backlog (state updates waiting for Redis) has its files there too.
    "DECISION_LOG_URL": None,
    "DECISION_LOG_SPOOL_DIR": None,
    "DECISION_LOG_TIMEOUT_MS": 200,
    # a commit PostgreSQL has not confirmed after this goes to the spool as well, and the next
    # second's commits straight there: a slow server delays an answer by this much at most
    "DECISION_LOG_HEDGE_MS": 20,
    # key for pseudonymising identifiers in the log; None: a random key kept in HASH_KEY_FILE
    "HASH_KEY": None,
    "HASH_KEY_FILE": "var/hash.key",
    # an accounts table (Parquet or CSV) loaded into the profile store at start
    "ACCOUNTS_FILE": None,
    # request limits
    "MAX_BODY_BYTES": 64 * 1024,
    "MAX_JSON_DEPTH": 8,
    "MAX_AMOUNT": 1e9,
    "MAX_FUTURE_SECONDS": 300,
    # events older than the newest seen by more than this are flagged late
    "MAX_LATENESS_SECONDS": 300,
    "IDEMPOTENCY_TTL_SECONDS": 7 * 24 * 3600,
    # with the in-memory state, the newest this-many scored events are kept whole in memory
    # (~10 KB each); older ones only in a Bloom filter of event ids (1.2-2 bytes each), their
    # answers read back from the decision log on a retry (risk_service/idempotency.py)
    "IDEMPOTENCY_MEMORY_EVENTS": 50_000,
    # with the in-memory state, at start: the event ids the decision log holds from this many
    # seconds back (at most RESTART_RECALL_MAX_EVENTS, newest first) become idempotency records
    # again, so retries that follow a restart are answered from the log, not scored anew
    "RESTART_RECALL_SECONDS": 3600,
    "RESTART_RECALL_MAX_EVENTS": 500_000,
    # with the in-memory state: a graceful stop writes the state here and the next start reads
    # it back, so a deploy keeps every velocity. "auto": state.snapshot beside
    # DECISION_LOG_PATH; "": off
    "STATE_SNAPSHOT_PATH": "auto",
    # with the in-memory state: also every this-many seconds, written by a forked copy of the
    # worker (the lock is held only for the fork), so a crash loses at most that much of the
    # state; the file then stays after a start. 0: only at a graceful stop (read once)
    "STATE_SNAPSHOT_INTERVAL_SECONDS": 300,
    # shared online state (redis://host:port/db); None: in process memory, one worker only
    "STATE_URL": None,
    "STATE_PREFIX": "risk:",
    # each Redis call gives up after this (then the answer is degraded)
    "STATE_TIMEOUT_MS": 5.0,
    "PROFILE_TTL_DAYS": 400,
    # a circuit breaker stops calling a store after this many consecutive failures,
    # and lets one trial call through after the cool-down
    "BREAKER_FAILURES": 5,
    "BREAKER_RESET_SECONDS": 1.0,
    # the whole /score request: shared-state retries stop (degraded answer) after this
    "REQUEST_DEADLINE_MS": 50.0,
    # a retry finishes a committed decision that its first request never logged after this
    "TAKEOVER_MS": 1000.0,
    # how fraud reasons get their contributions: "treeshap" (exact TreeSHAP on the compiled
    # forest, a third of LightGBM's time: ~1.9 ms a row) or "path" (path attribution,
    # ~60-160 µs: the same first reason as TreeSHAP for only 57-66% of flagged events;
    # risk_service/explain.py)
    "REASONS_METHOD": "treeshap",
    # credit decisions on the probability of default
    "CREDIT_APPROVE_MAX_PD": 0.2,
    "CREDIT_DECLINE_MIN_PD": 0.4,
    # Freeze start-up objects and collect only the youngest generation: the online state holds
    # millions of long-lived objects, and older collections over them stalled requests ~1 s.
    "GC_TUNING": True,
    # serve an empty JSON endpoint (/_empty) for side-by-side benchmarks
    "BENCH_EMPTY_ENDPOINT": False,
    # API keys (risk_service/auth.py). API_KEYS, for development: "KEY,KEY:score+read" (a key
    # alone has every scope). API_KEYS_FILE: TOML or JSON entries {id, sha256, scopes} made by
    # `risk keys create`. Neither set: loopback clients only, no key asked.
    "API_KEYS": None,
    "API_KEYS_FILE": None,
    # endpoints answered without a key (health, ready, metrics, openapi, docs); leave one out
    # and it needs a valid key
    "OPEN_ENDPOINTS": ["health", "ready", "metrics", "openapi", "docs"],
    # after this many failed authentications within the window, an address is blocked for
    # AUTH_BLOCK_SECONDS (limit 0: never): its requests without a valid key get 429, and with
    # AUTH_BLOCK_VALID_KEYS its valid keys too (only where each client has its own address:
    # behind a load balancer, NAT or Docker's port proxy one noisy client would block all).
    # At most AUTH_TRACKED_CLIENTS addresses are remembered.
    "AUTH_FAILURE_LIMIT": 20,
    "AUTH_FAILURE_WINDOW_SECONDS": 60,
    "AUTH_BLOCK_SECONDS": 60,
    "AUTH_BLOCK_VALID_KEYS": False,
    "AUTH_TRACKED_CLIENTS": 10_000,
    # proxies in front of the service whose X-Forwarded-For names the client address (rate
    # limits, loopback check); 0: the TCP peer is the client
    "TRUSTED_PROXIES": 0,
    # logs on stderr: "json" (one object per line) or "text" (for people); one access-log line
    # per request unless ACCESS_LOG is false
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "ACCESS_LOG": True,
}
