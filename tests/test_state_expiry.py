"""The in-memory state forgets idle entities without changing a feature (features/expiry.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from conftest import AppFactory
from test_api import NOW, iso, payment
from test_features_world import assert_features_equal, make_world, replay

from risk_service import metrics
from risk_service.decision_records import Pseudonymiser
from risk_service.features import (
    FEATURE_NAMES,
    LABEL_KINDS,
    MemoryStateStore,
    OnlineFeatureEngine,
    compute_offline_features,
)
from risk_service.features.expiry import RETENTION_MS, Dormant, active_ms
from risk_service.features.online import new_state
from risk_service.features.spec import DAY_MS
from risk_service.scoring import SWEEP_LIMIT

SINCE = FEATURE_NAMES.index("seconds_since_account_previous_event")
KM = FEATURE_NAMES.index("km_from_previous_location")


def dormant_world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The random world, with accounts A0-A9 asleep for 150 days after their first 20 days."""
    events, accounts, applications = make_world(n_accounts=40, n_events=3000, days=60, seed=5)
    sleepers = events["account_id"].isin([f"A{i}" for i in range(10)])
    late = sleepers & (events["timestamp"] >= pd.Timestamp("2024-01-21", tz="UTC"))
    shift = pd.Timedelta(days=150)
    events.loc[late, "timestamp"] += shift
    events.loc[late, "label_time"] += shift
    return events, accounts, applications


def test_forgetting_changes_no_feature_and_bounds_the_state() -> None:
    events, accounts, applications = dormant_world()
    kept = OnlineFeatureEngine()
    swept = OnlineFeatureEngine()
    full, credit_full = replay(events, accounts, applications, engine=kept, forget=False)
    online, credit_online = replay(events, accounts, applications, engine=swept)
    # the same answers as keeping everything, and as the offline computation
    np.testing.assert_array_equal(online, full)
    np.testing.assert_array_equal(credit_online, credit_full)
    offline = compute_offline_features(events, accounts).to_numpy()
    assert_features_equal(online, offline, FEATURE_NAMES)

    assert isinstance(swept.store, MemoryStateStore) and isinstance(kept.store, MemoryStateStore)
    counts = swept.store.counts()
    # at the end (day ~210) only the sleepers are active: the other 30 accounts are dormant
    assert counts["account"] == (10, 30)
    assert counts["ip"][1] == 0  # an ip keeps nothing once forgotten
    live = sum(n for n, _ in counts.values())
    assert live < 0.7 * sum(n for n, _ in kept.store.counts().values())
    # sleepers came back after 150 days: their gap and travel came from the dormant record
    order = np.argsort(events["timestamp"].to_numpy(), kind="stable")
    returned = online[order][:, SINCE] > 100 * 86_400
    assert returned.sum() >= 5
    assert np.isfinite(online[order][returned, KM]).any()


def test_label_kinds_kept_under_the_logs_hashes_give_the_same_features() -> None:
    """The service keeps the label kinds' states under the decision log's hashes (so a late
    label finds them from the log): features, forgetting and reviving are unchanged."""
    events, accounts, applications = dormant_world()
    hash_id = Pseudonymiser(b"state-test-" + b"k" * 32)
    plain = OnlineFeatureEngine()
    hashed = OnlineFeatureEngine(MemoryStateStore(hash_id, LABEL_KINDS))
    features, credit = replay(events, accounts, applications, engine=plain)
    features_hashed, credit_hashed = replay(events, accounts, applications, engine=hashed)
    np.testing.assert_array_equal(features_hashed, features)
    np.testing.assert_array_equal(credit_hashed, credit)
    store, reference = hashed.store, plain.store
    assert isinstance(store, MemoryStateStore) and isinstance(reference, MemoryStateStore)
    assert store.counts() == reference.counts() and store.counts()["account"] == (10, 30)
    assert set(LABEL_KINDS) == {"merchant", "device", "account"}
    for kind in ("merchant", "device", "account", "ip", "instrument"):
        keys = [key for key, _ in reference.states(kind)]
        expected = [hash_id(k) for k in keys] if kind in LABEL_KINDS else keys
        assert [key for key, _ in store.states(kind)] == expected, kind
    merchant, state = next(store.states("merchant"))
    assert store.by_stored_key().get("merchant", merchant) is state
    assert store.get("merchant", next(reference.states("merchant"))[0]) is state


def test_the_sweep_looks_at_the_front_and_stops_at_the_first_active() -> None:
    store = MemoryStateStore()
    ret = RETENTION_MS["ip"]
    for i, t in enumerate([0, 10, 5, 20]):  # ip2 is put after ip1, though it is older
        st = new_state("ip")
        st.last_ms = t
        store.put("ip", f"ip{i}", st)
    assert store.forget_idle(ret + 8) == {"ip": 1}  # ip0; ip1 (10) is active and stops the sweep
    assert store.get("ip", "ip0") is None and store.get("ip", "ip2") is not None
    assert store.forget_idle(ret + 11) == {"ip": 2}  # ip1 and ip2; ip3 (20) stops it
    assert store.counts()["ip"] == (1, 0)  # ips keep nothing once forgotten


def test_sweep_limit_late_puts_and_profiles() -> None:
    store = MemoryStateStore()
    ret = RETENTION_MS["account"]
    for i in range(5):  # a0..a4, active on days 0..4 (a bucketed sum and the last event)
        st = new_state("account")
        st.rolling[0].update(i * DAY_MS, [1] * len(st.rolling[0].totals))
        st.last_ms, st.last_loc = i * DAY_MS, (30.0, 120.0 + i, i * DAY_MS)
        store.put("account", f"a{i}", st)
        assert i * DAY_MS <= active_ms(st) < (i + 1) * DAY_MS
    store.put("profile", "a0", object())
    store.put("account", "a0", store.get("account", "a0"))  # put again: now last in line
    assert store.forget_idle(ret + 3 * DAY_MS, limit=1) == {"account": 1}  # a1: the limit holds
    assert store.forget_idle(ret + 3 * DAY_MS) == {
        "account": 1
    }  # a2; a3 is active, a0 waits behind it
    assert store.counts()["account"] == (3, 2)
    assert store.get("account", "a0").rolling[0].buckets  # still whole
    assert store.forget_idle(ret + 10 * DAY_MS) == {"account": 3}
    assert store.get("profile", "a0") is not None  # profiles are never swept
    assert len(store) == 1


def test_revived_states_carry_the_last_event_and_location() -> None:
    store = MemoryStateStore()
    st = new_state("account")
    st.last_ms, st.last_loc = 1_000, (31.0, 121.0, 1_000)
    store.put("account", "a", st)
    assert store.forget_idle(1_000 + RETENTION_MS["account"] + 1) == {"account": 1}
    assert store.counts()["account"] == (0, 1)
    revived = store.get("account", "a")
    assert revived is not st and revived.last_ms == 1_000
    assert revived.last_loc == (31.0, 121.0, 1_000)
    assert all(not r.buckets for r in revived.rolling)
    store.put("account", "a", revived)
    assert store.counts()["account"] == (1, 0)  # live again, the dormant record gone
    assert store.get("ip", "nope") is None
    assert Dormant(1, None).last_loc is None


def test_the_service_forgets_idle_entities_and_counts_their_gap(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    scorer = app.extensions["risk"]
    store = scorer.engine.store
    t0 = NOW - timedelta(days=200)

    def score(i: int, n: int, at: datetime) -> None:
        body = payment(
            f"exp-{i}",
            account_id=f"acc-{n}",
            ip_address=f"10.1.0.{n}",
            device_id=f"dev-{n}",
            instrument_id=f"tok-{n}",
            timestamp=iso(at),
        )
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.get_json()

    for n in range(50):  # 50 accounts, each on its own ip, device and card, over 50 minutes
        score(n, n, t0 + timedelta(minutes=n))
    assert store.counts()["ip"] == (50, 0)
    # 100 days later, other accounts: the 50 are forgotten (accounts and devices left
    # dormant), at most SWEEP_LIMIT a request: 200 states are due, so two requests
    later = t0 + timedelta(days=100)
    score(100, 100, later)
    assert sum(live for live, _ in store.counts().values()) == 201 + 4 - SWEEP_LIMIT
    score(101, 101, later + timedelta(seconds=1))
    counts = store.counts()
    assert counts["ip"] == (2, 0) and "payee" not in counts  # no transfers
    assert counts["account"] == (2, 50) and counts["device"] == (2, 50)
    assert counts["merchant"] == (1, 0)  # m-1 was paid again
    # the sweep's numbers reach /metrics
    text = client.get("/metrics").get_data(as_text=True)
    assert 'risk_state_entities{kind="account",tier="dormant"} 50.0' in text
    assert 'risk_state_entities{kind="ip",tier="live"} 2.0' in text
    assert metrics.sample("risk_state_forgotten_total", {"kind": "ip"}) >= 50
    assert 'risk_idempotency_records{tier="whole"} 52.0' in text
    # one comes back: its gap since its previous event is exact, its windows empty
    score(102, 7, later + timedelta(minutes=1))
    features = scorer.log.get("exp-102").features
    gap = (later + timedelta(minutes=1) - (t0 + timedelta(minutes=7))).total_seconds()
    assert features["seconds_since_account_previous_event"] == gap
    assert features["seconds_since_device_previous_event"] == gap
    assert features["account_events_30d"] == 0
    assert store.counts()["account"] == (3, 49)
