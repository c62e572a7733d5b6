"""No feature of an event depends on anything after it: later events, or labels not yet known."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
from test_features_world import assert_features_equal, make_world, replay

from risk_service.features import FEATURE_NAMES, OnlineFeatureEngine, compute_offline_features
from risk_service.features.derived import times_ms


def _before(events: pd.DataFrame, cut: pd.Timestamp) -> np.ndarray:
    return (events["timestamp"] < cut).to_numpy()


def test_altering_the_future_changes_nothing_before_it() -> None:
    events, accounts, _ = make_world(n_events=2000, seed=8)
    cut = events["timestamp"].quantile(0.5)
    base = compute_offline_features(events, accounts)
    rng = np.random.default_rng(0)
    future = events["timestamp"] >= cut
    altered = events.copy()
    for col in ("account_id", "device_id", "ip_address", "merchant_id", "amount", "is_fraud"):
        vals = altered.loc[future, col].to_numpy()
        altered.loc[future, col] = rng.permutation(vals)
    extra = altered[future].head(200).assign(event_id=lambda f: f["event_id"] + "x")
    # future rows first in input order: only the relative order of the past is canonical
    altered = pd.concat([extra, altered[future], altered[~future]])
    got = compute_offline_features(altered, accounts).loc[events.index[_before(events, cut)]]
    want = base.loc[events.index[_before(events, cut)]]
    pd.testing.assert_frame_equal(got, want)


def test_label_unused_before_its_label_time() -> None:
    events, accounts, _ = make_world(n_events=2000, seed=9)
    cut = events["timestamp"].quantile(0.6)
    base = compute_offline_features(events, accounts)
    late = (events["label_time"] >= cut).to_numpy()
    flipped = events.copy()
    flipped.loc[late, "is_fraud"] = 1 - flipped.loc[late, "is_fraud"]
    got = compute_offline_features(flipped, accounts)
    seen = (events["timestamp"] <= cut).to_numpy()  # a label at exactly t is not seen at t
    pd.testing.assert_frame_equal(got[seen], base[seen])
    assert not got[~seen].equals(base[~seen])  # the labels do matter later


def test_features_does_not_update_state() -> None:
    events, _, _ = make_world(n_events=300, seed=10)
    engine = OnlineFeatureEngine()
    ordered = events.iloc[np.argsort(times_ms(events["timestamp"]), kind="stable")]
    for row in ordered.to_dict("records"):
        a = engine.features(row)
        b = engine.features(row)
        c = engine.process(row)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


class PickleStore:
    """A store that keeps only serialised blobs, like the coming Redis store."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, Any], bytes] = {}

    def get(self, kind: str, key: Any) -> Any | None:
        blob = self.blobs.get((kind, key))
        return None if blob is None else pickle.loads(blob)

    def put(self, kind: str, key: Any, state: Any) -> None:
        self.blobs[(kind, key)] = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def test_serialised_store_gives_the_same_features() -> None:
    events, accounts, applications = make_world(n_events=600, seed=12)
    store = PickleStore()
    online, _ = replay(events, accounts, applications, OnlineFeatureEngine(store))
    assert_features_equal(
        online, compute_offline_features(events, accounts).to_numpy(), FEATURE_NAMES
    )
    biggest = max(len(b) for b in store.blobs.values())
    assert biggest < 64_000
