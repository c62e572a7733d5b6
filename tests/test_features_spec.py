"""The declarations themselves: names, descriptions, codes and the parity checker's teeth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_features_world import assert_features_equal

from risk_service.features import (
    CATEGORICAL_FEATURES,
    CREDIT_FEATURE_NAMES,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    OnlineFeatureEngine,
)
from risk_service.features.derived import to_ms


def test_names_are_unique_described_and_fixed() -> None:
    assert FEATURE_SET_VERSION.startswith("fs-")
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert len(set(CREDIT_FEATURE_NAMES)) == len(CREDIT_FEATURE_NAMES)
    assert set(CATEGORICAL_FEATURES) <= set(FEATURE_NAMES)
    for name in (*FEATURE_NAMES, *CREDIT_FEATURE_NAMES):
        assert FEATURE_DESCRIPTIONS[name]
    assert "account_events_24h" in FEATURE_NAMES


def test_request_time_features() -> None:
    engine = OnlineFeatureEngine()
    event = {
        "event_id": "e1",
        "timestamp": "2024-01-01T23:30:00Z",  # a Monday
        "account_id": "a",
        "event_type": "payment",
        "amount": 200.0,
        "channel": "teletype",
    }
    x = dict(zip(FEATURE_NAMES, engine.process(event), strict=True))
    assert x["event_type"] == 0 and np.isnan(x["channel"]) and np.isnan(x["merchant_category"])
    assert x["hour_of_day"] == 23 and x["day_of_week"] == 0
    assert x["amount_is_round"] == 1 and x["amount_is_small"] == 0
    assert x["account_events_24h"] == 0 and np.isnan(x["seconds_since_account_previous_event"])
    y = dict(zip(FEATURE_NAMES, engine.process({**event, "amount": 1.5}), strict=True))
    assert y["account_events_24h"] == 1 and y["seconds_since_account_previous_event"] == 0
    assert y["amount_is_round"] == 0 and y["amount_is_small"] == 1
    assert y["amount_to_account_mean_30d"] == pytest.approx(1.5 / 200.0)


def test_timestamp_forms_agree() -> None:
    ts = pd.Timestamp("2024-03-05T06:07:08.009Z")
    assert to_ms(ts) == to_ms(ts.to_pydatetime()) == to_ms("2024-03-05T06:07:08.009Z")
    assert to_ms(ts.tz_convert("Asia/Shanghai")) == to_ms(ts)


def test_parity_checker_detects_differences() -> None:
    a = np.array([[1.0, 0.5], [np.nan, 2.0]])
    assert_features_equal(a, a.copy(), ("x", "y"))
    with pytest.raises(AssertionError):
        assert_features_equal(a, np.array([[1.0, 0.5], [0.0, 2.0]]), ("x", "y"))
    with pytest.raises(AssertionError):
        assert_features_equal(a, np.array([[2.0, 0.5], [np.nan, 2.0]]), ("x", "y"))
