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

from risk_service import features as fs
from risk_service import lifecycle
from risk_service.decision_log import SQLiteDecisionLog
from risk_service.idempotency import MemoryIdempotencyStore
from risk_service.policy import Policy
from risk_service.scoring import LoadedModels, Scorer, ScoringSettings

log = logging.getLogger("risk_service")


def load_champions(models_dir: Path) -> LoadedModels:
    """The champion bundles, each fully verified (hashes, feature set and names) before loading."""
    return lifecycle.load_champions(Path(models_dir))


def load_policy(path: str | None, models_dir: Path | None = None) -> Policy:
    """POLICY_FILE (`path`) when set, always; else the verified policy champion in
    `models_dir`'s registry; else the packaged default policy."""
    return lifecycle.load_serving_policy(path, Path(models_dir) if models_dir else None)


def hash_key(config: Mapping[str, Any]) -> bytes:
    """The pseudonymisation key: configured, or random and kept in a 0600 file across restarts."""
    if config.get("HASH_KEY"):
        return str(config["HASH_KEY"]).encode()
    path = Path(config["HASH_KEY_FILE"])
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def load_accounts(scorer: Scorer, path: str) -> int:
    """An accounts table into the profile store; returns the number of profiles."""
    import pandas as pd

    source = Path(path)
    frame = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source)
    missing = [c for c in ("account_id", "created_at") if c not in frame.columns]
    if missing:
        raise ValueError(f"ACCOUNTS_FILE {path}: missing column(s) {missing}")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    for row in frame.to_dict(orient="records"):
        scorer.ingest_profile({str(k): v for k, v in row.items()})
    return len(frame)


def tune_gc() -> None:
    """Keep the garbage collector off the request path.

    The feature state is millions of small long-lived containers; Python's full
    (generation 2) collections walk all of them and were measured stalling a
    request for ~0.8 s. Objects alive after start-up are frozen (never scanned),
    and the thresholds make young collections rarer and full ones practically
    never happen. The state holds no reference cycles, so nothing leaks.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100_000)


def build_scorer(config: Mapping[str, Any]) -> Scorer:
    log_path = Path(config["DECISION_LOG_PATH"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(
        engine=fs.OnlineFeatureEngine(),
        models=load_champions(Path(config["MODELS_DIR"])),
        policy=load_policy(config.get("POLICY_FILE")),
        log=SQLiteDecisionLog(
            log_path, hash_key(config), synchronous=str(config["DECISION_LOG_SYNC"])
        ),
        idempotency=MemoryIdempotencyStore(int(config["IDEMPOTENCY_TTL_SECONDS"]) * 1000),
        settings=ScoringSettings(
            max_lateness_ms=int(config["MAX_LATENESS_SECONDS"]) * 1000,
            credit_approve_max_pd=float(config["CREDIT_APPROVE_MAX_PD"]),
            credit_decline_min_pd=float(config["CREDIT_DECLINE_MIN_PD"]),
        ),
    )
    if config.get("ACCOUNTS_FILE"):
        count = load_accounts(scorer, str(config["ACCOUNTS_FILE"]))
        log.info("loaded %d account profiles from %s", count, config["ACCOUNTS_FILE"])
    return scorer
