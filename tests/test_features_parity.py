"""Online replay == offline table computation, for every feature of every event."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from test_features_world import assert_features_equal, make_world, replay

from risk_service.features import (
    CREDIT_FEATURE_NAMES,
    FEATURE_NAMES,
    OnlineFeatureEngine,
    compute_offline_credit_features,
    compute_offline_features,
)
from risk_service.features.derived import to_ms
from training.simulate import generate_world


@pytest.mark.parametrize("seed", [0, 1])
def test_online_replay_equals_offline(seed: int) -> None:
    events, accounts, applications = make_world(n_accounts=40, n_events=3000, seed=seed)
    offline = compute_offline_features(events, accounts)
    assert list(offline.columns) == list(FEATURE_NAMES)
    assert offline.index.equals(events.index)
    assert (offline.dtypes == np.float64).all()
    online, credit_online = replay(events, accounts, applications)
    assert_features_equal(online, offline.to_numpy(), FEATURE_NAMES)
    credit = compute_offline_credit_features(events, accounts, applications)
    assert list(credit.columns) == list(CREDIT_FEATURE_NAMES)
    assert credit.index.equals(applications.index)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)


def test_the_python_rolling_sums_give_the_same_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where `_rolling.c` is not built, the engine runs on `PyRollingSums` and the Python
    loops: the same parity must hold there (a dense world: long windows, late expiry)."""
    from risk_service.features import aggregates, online

    monkeypatch.setattr(online, "RollingSums", aggregates.PyRollingSums)
    monkeypatch.setattr(online, "read_into", aggregates.py_read_into)
    monkeypatch.setattr(online, "update_from", aggregates.py_update_from)
    assert type(online.new_state("account").rolling[0]) is aggregates.PyRollingSums
    assert_dense_world_parity(n_events=3000, seed=3)


def assert_dense_world_parity(n_events: int, seed: int) -> None:
    events, accounts, applications = make_world(
        n_accounts=8, n_events=n_events, days=200, seed=seed
    )
    replayed, credit_online = replay(events, accounts, applications)
    assert_features_equal(
        replayed, compute_offline_features(events, accounts).to_numpy(), FEATURE_NAMES
    )
    credit = compute_offline_credit_features(events, accounts, applications)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)


def test_dense_world_parity() -> None:
    """Few entities, many events: long windows, many members, expiry of the 90-day horizon."""
    assert_dense_world_parity(n_events=4000, seed=7)


def test_required_columns_only() -> None:
    events, _, applications = make_world(n_events=500, seed=2)
    slim = events[["event_id", "timestamp", "account_id", "event_type", "amount"]]
    offline = compute_offline_features(slim)
    online, credit_online = replay(slim, None, applications)
    assert_features_equal(online, offline.to_numpy(), FEATURE_NAMES)
    assert offline["device_events_1h"].isna().all()
    assert offline["account_events_24h"].notna().all()
    assert (offline["account_known_frauds_90d"] == 0).all()
    credit = compute_offline_credit_features(slim, None, applications)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)


def test_string_timestamps_and_unsorted_input() -> None:
    events, accounts, _ = make_world(n_events=400, seed=4)
    as_text = events.assign(
        timestamp=events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        label_time=events["label_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    a = compute_offline_features(events, accounts)
    b = compute_offline_features(as_text, accounts)
    pd.testing.assert_frame_equal(a, b)
    online, _ = replay(as_text, accounts)
    assert_features_equal(online, b.to_numpy(), FEATURE_NAMES)


def test_simulator_world_parity() -> None:
    """The real simulated world: every fraud scenario, real ids and label delays."""
    world = generate_world(accounts=800, days=45, seed=11, start=date(2024, 3, 1), progress=False)
    assert world.events["is_fraud"].sum() > 0
    events, accounts = world.events, world.accounts
    online, credit_online = replay(events, accounts, world.credit)
    assert_features_equal(
        online, compute_offline_features(events, accounts).to_numpy(), FEATURE_NAMES
    )
    credit = compute_offline_credit_features(events, accounts, world.credit)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)


def test_out_of_order_arrivals_change_only_their_own_features() -> None:
    """Arrivals jittered by up to 3 minutes: every event that finds the stream in order (the
    events that arrived before it are exactly those before it in time) gets the features of
    the time-sorted table, also after out-of-order ones; an out-of-order event itself is
    scored on the state as it stands (docs/features.md, "Late events")."""
    events, accounts, _ = make_world(n_accounts=30, n_events=3000, days=20, seed=9)
    rng = np.random.default_rng(9)
    ms = np.array([to_ms(t) for t in events["timestamp"]], dtype=np.int64)
    delayed = rng.random(len(ms)) < 0.3
    arrival_ms = ms + delayed * rng.integers(1, 3 * 60_000, len(ms))
    arrived = events.iloc[np.lexsort((np.arange(len(ms)), arrival_ms))]  # arrival order
    records = arrived.to_dict("records")
    t = np.array([to_ms(r["timestamp"]) for r in records], dtype=np.int64)
    later_min = np.minimum.accumulate(t[::-1])[::-1]  # the earliest timestamp from i on
    in_order = (t >= np.maximum.accumulate(t)) & (t <= np.append(later_min[1:], t.max()))
    labels = sorted(
        (to_ms(r["label_time"]), i)
        for i, r in enumerate(records)
        if r["is_fraud"] == 1 and not pd.isna(r["label_time"])
    )
    engine = OnlineFeatureEngine()
    for row in accounts.to_dict("records"):
        engine.ingest_profile(row)
    online = np.empty((len(records), len(FEATURE_NAMES)))
    k = 0
    for i, record in enumerate(records):
        while k < len(labels) and labels[k][0] < t[i]:
            engine.ingest_label(records[labels[k][1]], 1, labels[k][0])
            k += 1
        online[i] = engine.process(record)
    offline = compute_offline_features(arrived, accounts).to_numpy()  # ties: arrival order
    assert 200 < (~in_order).sum() < len(records) / 2
    assert_features_equal(online[in_order], offline[in_order], FEATURE_NAMES)
    differs = ~np.isclose(online[~in_order], offline[~in_order], equal_nan=True).all(axis=1)
    assert differs.sum() > 10  # the out-of-order ones did see events stamped after them
