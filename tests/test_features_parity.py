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
    compute_offline_credit_features,
    compute_offline_features,
)
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


def test_dense_world_parity() -> None:
    """Few entities, many events: long windows, many members, expiry of the 90-day horizon."""
    events, accounts, applications = make_world(n_accounts=8, n_events=4000, days=200, seed=7)
    online, credit_online = replay(events, accounts, applications)
    assert_features_equal(
        online, compute_offline_features(events, accounts).to_numpy(), FEATURE_NAMES
    )
    credit = compute_offline_credit_features(events, accounts, applications)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)


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
