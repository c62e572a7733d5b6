"""A small deterministic random world for feature tests (until the real simulator exists).

It is adversarial rather than realistic: shared devices and IPs, transfers between
accounts, equal timestamps, events on bucket edges, missing optional values, labels
with delays (some exactly at later event times), accounts missing from the profile
table or created after their first events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from risk_service.features import CREDIT_FEATURE_NAMES, FEATURE_NAMES, OnlineFeatureEngine
from risk_service.features.derived import to_ms
from risk_service.schema import (
    AUTH_METHODS,
    CHANNELS,
    EVENT_TYPES,
    FUNDING_SOURCES,
    MERCHANT_CATEGORIES,
    required_columns,
)

START = pd.Timestamp("2024-01-01", tz="UTC")


def _maybe_missing(rng: np.random.Generator, values: np.ndarray, p: float) -> np.ndarray:
    out = values.astype(object)
    out[rng.random(len(values)) < p] = None
    return out


def make_world(
    n_accounts: int = 40, n_events: int = 4000, days: int = 120, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, accounts, applications), events in a shuffled (not time-sorted) order."""
    rng = np.random.default_rng(seed)
    accounts = np.array([f"A{i}" for i in range(n_accounts)])
    # Bursty times: events cluster around a few per-account sessions.
    n_sessions = max(1, n_events // 8)
    session_t = rng.integers(0, days * 86_400, n_sessions)
    session_acc = rng.integers(0, n_accounts, n_sessions)
    s = rng.integers(0, n_sessions, n_events)
    offset = rng.choice([0, 0, 1, 59, 60, 61, 600, 3599, 3600, 86_399, 86_400], n_events)
    secs = session_t[s] + offset + rng.integers(0, 5, n_events) * (rng.random(n_events) < 0.5)
    ms = secs.astype(np.int64) * 1000 + rng.choice([0, 0, 0, 1, 999], n_events)
    acc = np.where(
        rng.random(n_events) < 0.85, session_acc[s], rng.integers(0, n_accounts, n_events)
    )
    et = rng.choice(np.array(EVENT_TYPES), n_events, p=[0.55, 0.2, 0.08, 0.1, 0.07])
    amount = np.round(np.exp(rng.normal(3.5, 1.6, n_events)), 2)
    amount = np.where(
        rng.random(n_events) < 0.1, rng.choice([0.01, 1.0, 2.0, 2.01], n_events), amount
    )
    amount = np.where(
        rng.random(n_events) < 0.05, rng.choice([100.0, 500.0, 1000.0], n_events), amount
    )
    devices = np.array([f"D{i}" for i in range(n_accounts // 2)])  # shared devices
    ips = np.array([f"10.0.0.{i}" for i in range(n_accounts // 4)])
    merchants = np.array([f"M{i}" for i in range(12)])
    is_payment = np.isin(et, ["payment", "bill_pay"])
    merchant = np.where(is_payment, rng.choice(merchants, n_events), None)
    payee = np.where(et == "transfer", rng.choice(accounts, n_events), None)
    instrument = np.array([f"I{a % 15}-{rng.integers(0, 3)}" for a in acc])
    lat = np.where(rng.random(n_events) < 0.7, 30 + rng.normal(0, 2, n_events), np.nan)
    lon = np.where(np.isnan(lat), np.nan, 120 + rng.normal(0, 2, n_events))
    fraud = (rng.random(n_events) < 0.08).astype(np.int8)
    delay_ms = rng.integers(0, 20 * 86_400, n_events).astype(np.int64) * 1000
    # Some labels land exactly on another event's timestamp (the tie rule).
    tie = rng.random(n_events) < 0.2
    label_ms = np.where(tie, ms[rng.integers(0, n_events, n_events)], ms + delay_ms)
    label_ms = np.maximum(label_ms, ms)
    events = pd.DataFrame(
        {
            "event_id": [f"E{i}" for i in range(n_events)],
            "timestamp": START + pd.to_timedelta(ms, unit="ms"),
            "account_id": accounts[acc],
            "event_type": et,
            "amount": amount,
            "currency": "CNY",
            "channel": _maybe_missing(rng, rng.choice(np.array([*CHANNELS, "fax"]), n_events), 0.1),
            "merchant_id": merchant,
            "merchant_category": _maybe_missing(
                rng, rng.choice(np.array(MERCHANT_CATEGORIES), n_events), 0.2
            ),
            "payee_account_id": payee,
            "instrument_id": _maybe_missing(rng, instrument, 0.1),
            "funding_source": _maybe_missing(
                rng, rng.choice(np.array(FUNDING_SOURCES), n_events), 0.1
            ),
            "device_id": _maybe_missing(rng, rng.choice(devices, n_events), 0.1),
            "ip_address": _maybe_missing(rng, rng.choice(ips, n_events), 0.1),
            "latitude": lat,
            "longitude": lon,
            "auth_method": _maybe_missing(rng, rng.choice(np.array(AUTH_METHODS), n_events), 0.1),
            "is_fraud": fraud,
            "label_time": START + pd.to_timedelta(label_ms, unit="ms"),
        }
    )
    events.loc[rng.random(n_events) < 0.03, "label_time"] = pd.NaT
    events = events.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    events.index = pd.RangeIndex(100, 100 + n_events)  # a non-default index must survive
    prof = accounts[: int(n_accounts * 0.9)]  # some accounts have no profile
    profiles = pd.DataFrame(
        {
            "account_id": prof,
            "created_at": START + pd.to_timedelta(rng.integers(-400, 30, len(prof)), unit="D"),
            "kyc_level": rng.integers(0, 4, len(prof)).astype(np.int8),
            "age": rng.integers(18, 80, len(prof)),
            "monthly_income": np.where(
                rng.random(len(prof)) < 0.1, np.nan, rng.uniform(0, 20000, len(prof))
            ),
            "home_latitude": 30 + rng.normal(0, 1, len(prof)),
            "home_longitude": 120 + rng.normal(0, 1, len(prof)),
            "credit_limit": rng.choice([0.0, 1000.0, 5000.0], len(prof)),
        }
    )
    n_app = max(5, n_events // 20)
    app_ms = np.where(rng.random(n_app) < 0.3, ms[rng.integers(0, n_events, n_app)],
                      rng.integers(0, days * 86_400_000, n_app))  # fmt: skip
    applications = pd.DataFrame(
        {
            "application_id": [f"P{i}" for i in range(n_app)],
            "account_id": accounts[rng.integers(0, n_accounts, n_app)],
            "timestamp": START + pd.to_timedelta(app_ms, unit="ms"),
            "requested_limit": rng.choice([500.0, 2000.0, 10000.0], n_app),
        }
    )
    return events, profiles, applications


def replay(
    events: pd.DataFrame,
    accounts: pd.DataFrame | None,
    applications: pd.DataFrame | None = None,
    engine: OnlineFeatureEngine | None = None,
    forget: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Online replay in canonical order: profiles first; before each event (or application)
    at t, the fraud labels with label_time < t; applications before events at equal t.
    ``forget``: before each step, the store forgets what is idle as of t, as the service's does.

    Returns (fraud features in ``events`` row order, credit features in application order).
    """
    engine = engine or OnlineFeatureEngine()
    if accounts is not None:
        for row in accounts.to_dict("records"):
            engine.ingest_profile(row)
    records = events.to_dict("records")
    ev_ms = np.array([to_ms(r["timestamp"]) for r in records], dtype=np.int64)
    labels: list[tuple[int, int]] = []
    if "is_fraud" in events.columns and "label_time" in events.columns:
        for i, r in enumerate(records):
            if r["is_fraud"] == 1 and not pd.isna(r["label_time"]):
                labels.append((to_ms(r["label_time"]), i))
    labels.sort(key=lambda x: x[0])
    apps = [] if applications is None else applications.to_dict("records")
    app_ms = [to_ms(a["timestamp"]) for a in apps]
    # (time, 0 = application / 1 = event, input position): the canonical replay order
    steps = sorted(
        [(m, 0, j) for j, m in enumerate(app_ms)] + [(int(m), 1, i) for i, m in enumerate(ev_ms)]
    )
    fraud = np.empty((len(records), len(FEATURE_NAMES)))
    credit = np.empty((len(apps), len(CREDIT_FEATURE_NAMES)))
    k = 0
    for t, kind, i in steps:
        while k < len(labels) and labels[k][0] < t:
            engine.ingest_label(records[labels[k][1]], 1, labels[k][0])
            k += 1
        if forget:
            engine.forget_idle(t)
        if kind == 0:
            credit[i] = engine.credit_features(apps[i])
        else:
            fraud[i] = engine.process(records[i])
    return fraud, credit


def assert_features_equal(online: np.ndarray, offline: np.ndarray, names: tuple[str, ...]) -> None:
    """Equal per feature: exact where both are integral, else 1e-9 abs + rel; NaN == NaN."""
    assert online.shape == offline.shape
    for j, name in enumerate(names):
        a, b = online[:, j], offline[:, j]
        close = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
        bad = np.flatnonzero(~close)
        assert not len(bad), f"{name}: rows {bad[:5]} online {a[bad[:5]]} offline {b[bad[:5]]}"
        integral = ~np.isnan(b) & (b == np.round(b)) & (np.abs(b) < 1e12)
        exact = np.flatnonzero(integral & (a != b) & (name not in _FLOAT_FEATURES))
        assert not len(exact), f"{name}: inexact at rows {exact[:5]}"


_FLOAT_FEATURES = {
    "km_from_previous_location", "speed_kmh_from_previous_location", "km_from_home",
    "account_age_days", "amount_to_account_mean_30d", "amount_to_instrument_mean_30d",
    "amount_to_merchant_mean_7d", "amount_to_monthly_income", "merchant_known_fraud_rate_30d",
    "requested_to_income", "credit_line_utilisation_30d",
}  # fmt: skip


def test_world_is_deterministic_and_canonical() -> None:
    a, b = make_world(seed=3)[0], make_world(seed=3)[0]
    pd.testing.assert_frame_equal(a, b)
    assert set(required_columns("events")) <= set(a.columns)
    assert a["timestamp"].duplicated().any()  # ties exist
    assert a["device_id"].isna().any() and a["payee_account_id"].notna().any()
