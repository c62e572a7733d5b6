"""Benchmark the feature layer: offline features for ~1M events, online cost per event.

Uses the simulator (``--source simulator``, default) or a synthetic stream with the same
columns. Run: ``python bench/bench_features.py [--events 1000000] [--online 50000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from risk_service.features import (
    FEATURE_NAMES,
    OnlineFeatureEngine,
    compute_offline_features,
)
from risk_service.schema import AUTH_METHODS, CHANNELS, FUNDING_SOURCES, MERCHANT_CATEGORIES


def _ids(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, numbers.astype(str))


def synthetic(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n events over 90 days from n/20 accounts, shared devices/IPs, transfers, labels."""
    rng = np.random.default_rng(seed)
    n_acc = max(10, n // 20)
    acc = rng.integers(0, n_acc, n)
    ms = np.sort(rng.integers(0, 90 * 86_400_000, n)).astype(np.int64)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    et = rng.choice(["payment", "transfer", "withdrawal", "top_up", "bill_pay"], n,
                    p=[0.6, 0.15, 0.08, 0.1, 0.07])  # fmt: skip
    ids = _ids("A", acc)
    lat = np.where(rng.random(n) < 0.8, 30 + rng.normal(0, 2, n), np.nan)
    pay, tr = et == "payment", et == "transfer"
    device = acc // 2 + (rng.random(n) < 0.1) * rng.integers(0, n_acc, n)
    events = pd.DataFrame(
        {
            "event_id": _ids("E", np.arange(n)),
            "timestamp": start + pd.to_timedelta(ms, unit="ms"),
            "account_id": ids,
            "event_type": et,
            "amount": np.round(np.exp(rng.normal(3.5, 1.5, n)), 2),
            "channel": rng.choice(np.array(CHANNELS), n),
            "merchant_id": np.where(pay, _ids("M", rng.integers(0, 5000, n)), None),
            "merchant_category": rng.choice(np.array(MERCHANT_CATEGORIES), n),
            "payee_account_id": np.where(tr, _ids("A", rng.integers(0, n_acc, n)), None),
            "instrument_id": _ids("I", acc * 3 + rng.integers(0, 3, n)),
            "funding_source": rng.choice(np.array(FUNDING_SOURCES), n),
            "device_id": _ids("D", device),
            "ip_address": _ids("ip", acc // 5),
            "latitude": lat,
            "longitude": np.where(np.isnan(lat), np.nan, 120 + rng.normal(0, 2, n)),
            "auth_method": rng.choice(np.array(AUTH_METHODS), n),
            "is_fraud": (rng.random(n) < 0.005).astype(np.int8),
            "label_time": start
            + pd.to_timedelta(ms + rng.integers(0, 30 * 86_400_000, n), unit="ms"),
        }
    )
    accounts = pd.DataFrame(
        {
            "account_id": _ids("A", np.arange(n_acc)),
            "created_at": start - pd.to_timedelta(rng.integers(0, 1000, n_acc), unit="D"),
            "kyc_level": rng.integers(0, 4, n_acc),
            "age": rng.integers(18, 80, n_acc),
            "monthly_income": rng.uniform(1000, 20000, n_acc),
            "home_latitude": 30 + rng.normal(0, 2, n_acc),
            "home_longitude": 120 + rng.normal(0, 2, n_acc),
            "credit_limit": rng.choice([0.0, 1000.0, 5000.0], n_acc),
        }
    )
    return events, accounts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--online", type=int, default=50_000)
    parser.add_argument("--source", choices=["simulator", "synthetic"], default="simulator")
    args = parser.parse_args()
    if args.source == "simulator":
        from training.simulate import generate_world

        # about 0.8 events per account and day
        world = generate_world(accounts=max(100, args.events // 100), days=120, seed=1)
        events, accounts = world.events, world.accounts
    else:
        events, accounts = synthetic(args.events)
    compute_offline_features(events.head(1000), accounts)  # numba compile / warm caches
    t0 = time.perf_counter()
    feats = compute_offline_features(events, accounts)
    dt = time.perf_counter() - t0
    print(f"offline: {len(events):,} events x {len(FEATURE_NAMES)} features in {dt:.1f} s "
          f"({len(events) / dt:,.0f} events/s)")  # fmt: skip
    assert feats.shape == (len(events), len(FEATURE_NAMES))

    engine = OnlineFeatureEngine()
    for row in accounts.to_dict("records"):
        engine.ingest_profile(row)
    # online: replay the start of the stream in canonical order, time the second part
    ordered = events.sort_values("timestamp", kind="stable")
    records = ordered.head(args.online).to_dict("records")
    warm = len(records) // 5
    for r in records[:warm]:
        engine.process(r)
    t0 = time.perf_counter()
    for r in records[warm:]:
        engine.features(r)
    t_feat = (time.perf_counter() - t0) / (len(records) - warm)
    engine2 = OnlineFeatureEngine(engine.store)
    t0 = time.perf_counter()
    for r in records[warm:]:
        engine2.process(r)
    t_proc = (time.perf_counter() - t0) / (len(records) - warm)
    print(f"online: features {t_feat * 1e6:.0f} us/event, process (features + update) "
          f"{t_proc * 1e6:.0f} us/event over {len(records) - warm:,} events")  # fmt: skip


if __name__ == "__main__":
    main()
