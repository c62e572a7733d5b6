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
    # the policy file (TOML); None means the packaged default policy
    "POLICY_FILE": None,
    # embedded decision log (SQLite, WAL). NORMAL: an acknowledged decision survives a crash of
    # the process; FULL: also of the OS or the power, at an fsync per group commit (~1-3 ms here)
    "DECISION_LOG_PATH": "var/decisions.sqlite",
    "DECISION_LOG_SYNC": "NORMAL",
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
    # credit decisions on the probability of default
    "CREDIT_APPROVE_MAX_PD": 0.2,
    "CREDIT_DECLINE_MIN_PD": 0.4,
    # Freeze start-up objects and make full collections rare: the online state holds millions
    # of long-lived objects, and a full collection over them stalls requests for ~1 s.
    "GC_TUNING": True,
    # serve an empty JSON endpoint (/_empty) for side-by-side benchmarks
    "BENCH_EMPTY_ENDPOINT": False,
}
