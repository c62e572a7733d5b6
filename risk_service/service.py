"""Wiring the scoring core from configuration: verified models, policy, log, state, profiles.

`init_app` attaches one `Scorer` to a Flask app as `app.extensions["risk"]`.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from risk_service import features as fs
from risk_service import lifecycle, metrics, verification
from risk_service.breaker import CircuitBreaker
from risk_service.decision_log import default_spool_dir, open_decision_log
from risk_service.decision_records import Pseudonymiser
from risk_service.fraud_model import check_reasons_method
from risk_service.idempotency import MemoryIdempotencyStore
from risk_service.lifecycle import ChampionWatcher, Serving
from risk_service.policy import Policy
from risk_service.redis_state import RedisState
from risk_service.scoring import LoadedModels, Scorer, ScoringSettings
from risk_service.snapshot import PeriodicSnapshots

log = logging.getLogger("risk_service")


def load_champions(models_dir: Path) -> LoadedModels:
    """The champion bundles, each fully verified (hashes, feature set and names) before loading."""
    return lifecycle.load_champions(Path(models_dir))


def load_policy(path: str | None, models_dir: Path | None = None) -> Policy:
    """POLICY_FILE (`path`) when set, always; else the verified policy champion in
    `models_dir`'s registry; else the packaged default policy."""
    return verification.load_serving_policy(path, Path(models_dir) if models_dir else None)


def hash_key(config: Mapping[str, Any]) -> bytes:
    """The pseudonymisation key: configured, or random and kept in a 0600 file across restarts."""
    if config.get("HASH_KEY"):
        return str(config["HASH_KEY"]).encode()
    path = Path(config["HASH_KEY_FILE"])
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # atomic; fails if a worker starting beside us got there first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes().strip()


def load_accounts(scorer: Scorer, path: str) -> int:
    """An accounts table into the profile store; returns the number of profiles."""
    import pandas as pd

    source = Path(path)
    frame = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source)
    missing = [c for c in ("account_id", "created_at") if c not in frame.columns]
    if missing:
        raise ValueError(f"ACCOUNTS_FILE {path}: missing column(s) {missing}")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    from risk_service.bundles import sha256_file

    return scorer.ingest_profiles(
        ({str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")),
        marker=sha256_file(source),  # several workers start at once: one loads the file
    )


YOUNG_GC_THRESHOLD = 2_000
"""Net container allocations between young collections: each scans at most this many
objects (~0.5 ms on the benchmark machine), and the state's growth passes through it."""


def tune_gc() -> None:
    """Keep the garbage collector's pauses short and bounded on the request path.

    The feature state is millions of small long-lived containers, and it grows with every
    new entity. CPython's generations scan them again and again: a generation-1 collection
    walks every survivor since the last full one, a pause that grows with the state (1.8-2.4 s
    with the previous thresholds, once per ~40,000 requests: bench/bench_pauses.py, which
    also measures CPython's defaults, no better). So: objects alive after start-up
    are frozen (never scanned); young collections stay small and frequent; and the older
    generations are never collected automatically, so no pause grows with the state.

    The price: a reference cycle that is still alive at a young collection and dies later
    is never freed. A request makes none on the scoring path: werkzeug's URL matcher made
    one a request (one in 360 to 1,700 leaked, ~70 MB a day at 800 requests a second) until
    `routing.StaticRouteMatcher` answered the routes without variables from a dict
    (tests/test_routing.py counts the cycles of /score, a retry, /health: none).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, 2**31 - 1, 2**31 - 1)


def _observe_store(store: str, op: str, seconds: float, ok: bool) -> None:
    metrics.observe_store(store, op, seconds)
    if not ok:
        metrics.store_error(store, op)


def build_shared_state(config: Mapping[str, Any], key: bytes) -> RedisState | None:
    """The Redis state store when STATE_URL is set (checked reachable at start), else None."""
    url = config.get("STATE_URL")
    if not url:
        return None
    shared = RedisState(
        str(url),
        key,
        prefix=str(config["STATE_PREFIX"]),
        timeout_ms=float(config["STATE_TIMEOUT_MS"]),
        idempotency_ttl_ms=int(config["IDEMPOTENCY_TTL_SECONDS"]) * 1000,
        profile_ttl_ms=int(config["PROFILE_TTL_DAYS"]) * 24 * 3600 * 1000,
        breaker=CircuitBreaker(
            "redis", int(config["BREAKER_FAILURES"]), float(config["BREAKER_RESET_SECONDS"])
        ),
        observe=_observe_store,
    )
    try:  # at start a slow first connection is fine; requests are strict
        shared.check_key()
    except redis.RedisError as exc:
        log.warning("state store %s not reachable at start (%s): answers degrade", url, exc)
    return shared


def _publish_versions(serving: Serving) -> None:
    """The version gauges follow a hot swap at once, not at the next /score."""
    metrics.set_versions(serving.models.versions(), serving.policy.version)


def spool_dir(config: Mapping[str, Any]) -> Path:
    """The local durable directory: the PostgreSQL log's spool and the degraded backlog."""
    configured = config.get("DECISION_LOG_SPOOL_DIR")
    return Path(configured) if configured else default_spool_dir(config["DECISION_LOG_PATH"])


def snapshot_path(config: Mapping[str, Any]) -> Path | None:
    """STATE_SNAPSHOT_PATH: "auto" is state.snapshot beside the SQLite decision log; "": off."""
    configured = str(config.get("STATE_SNAPSHOT_PATH") or "")
    if configured == "auto":
        return Path(config["DECISION_LOG_PATH"]).with_name("state.snapshot")
    return Path(configured) if configured else None


def save_snapshot(app: Any) -> int:
    """At a graceful stop: the in-memory state to STATE_SNAPSHOT_PATH (`snapshot.py`), under
    the key check `build_scorer` made."""
    scorer = app.extensions.get("risk")
    if not isinstance(scorer, Scorer) or scorer.snapshot_to is None:
        return 0  # none here, or a front: its scoring process writes it (scoring_process.py)
    periodic = app.extensions.get("risk_snapshots")
    if periodic is not None:
        periodic.stop()  # a child still writing finishes first: this snapshot is the newest
    path, key_check = scorer.snapshot_to
    written: int = scorer.save_snapshot(path, key_check)
    if written:
        log.info("state of %d entities written to %s for the next start", written, path)
    return written


def periodic_snapshots(scorer: Scorer, config: Mapping[str, Any]) -> PeriodicSnapshots | None:
    """The periodic snapshots of the in-memory state (`snapshot.py`), not yet started; None
    on Redis, without a snapshot path, or with STATE_SNAPSHOT_INTERVAL_SECONDS 0."""
    interval = float(config["STATE_SNAPSHOT_INTERVAL_SECONDS"])
    if scorer.snapshot_to is None or scorer.shared is not None or interval <= 0:
        return None
    path, key_check = scorer.snapshot_to
    return PeriodicSnapshots(scorer, path, key_check, interval)


def build_scorer(config: Mapping[str, Any]) -> tuple[Scorer, ChampionWatcher]:
    """The scorer on its verified champions, and the watcher that keeps them current."""
    log_path = Path(config["DECISION_LOG_PATH"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    key = hash_key(config)
    watcher = ChampionWatcher(
        Path(config["MODELS_DIR"]),
        policy_file=config.get("POLICY_FILE"),
        interval=float(config["RELOAD_INTERVAL_SECONDS"]),
        on_swap=_publish_versions,
    )
    serving = watcher.load()
    _publish_versions(serving)
    # in memory, the label kinds' states are keyed as the log names them (labels come weeks
    # later, past the idempotency records: `Scorer.ingest_label`); Redis hashes every key
    pseudonymise = Pseudonymiser(key)
    store = fs.MemoryStateStore(pseudonymise, fs.LABEL_KINDS)
    scorer = Scorer(
        engine=fs.OnlineFeatureEngine(store),
        models=serving.models,
        policy=serving.policy,
        log=open_decision_log(
            config.get("DECISION_LOG_URL"),
            path=log_path,
            hash_key=key,
            synchronous=str(config["DECISION_LOG_SYNC"]),
            spool_dir=spool_dir(config),
            timeout_ms=int(config["DECISION_LOG_TIMEOUT_MS"]),
            hedge_ms=float(config["DECISION_LOG_HEDGE_MS"]),
        ),
        idempotency=MemoryIdempotencyStore(
            int(config["IDEMPOTENCY_TTL_SECONDS"]) * 1000,
            memory_events=int(config["IDEMPOTENCY_MEMORY_EVENTS"]),
        ),
        settings=ScoringSettings(
            max_lateness_ms=int(config["MAX_LATENESS_SECONDS"]) * 1000,
            credit_approve_max_pd=float(config["CREDIT_APPROVE_MAX_PD"]),
            credit_decline_min_pd=float(config["CREDIT_DECLINE_MIN_PD"]),
            deadline_ms=float(config["REQUEST_DEADLINE_MS"]),
            takeover_ms=float(config["TAKEOVER_MS"]),
            reasons_method=check_reasons_method(str(config["REASONS_METHOD"])),
        ),
        shared=build_shared_state(config, key),
        backlog_dir=spool_dir(config),
    )
    watcher.attach(scorer)  # models, policy and shadow, now and on every swap
    state_file = snapshot_path(config)
    if state_file is not None:
        # a fingerprint of the hash key: a snapshot is read back only under the key it used
        key_check = pseudonymise("risk-service state snapshot key check")
        scorer.snapshot_to = (state_file, key_check)
        periodic = float(config["STATE_SNAPSHOT_INTERVAL_SECONDS"]) > 0
        # kept when snapshots are periodic: after a crash, the next start reads it again
        restored = scorer.load_snapshot(state_file, key_check, pseudonymise, remove=not periodic)
        if restored:
            log.info("state of %d entities restored from %s", restored, state_file)
    recalled = scorer.recall_recent(
        float(config["RESTART_RECALL_SECONDS"]), int(config["RESTART_RECALL_MAX_EVENTS"])
    )
    if recalled:
        log.info("recalled %d recent decisions from the log as idempotency records", recalled)
    if config.get("ACCOUNTS_FILE"):
        count = load_accounts(scorer, str(config["ACCOUNTS_FILE"]))
        log.info("loaded %d account profiles from %s", count, config["ACCOUNTS_FILE"])
    return scorer, watcher
