"""Backtest features: the offline feature code, plus the credit features of pay-later payments
exactly as the service computes them (before the payment, after every earlier event).

`compute_offline_credit_features` places an application before the events that share its
timestamp (that is how the service sees a credit application). A pay-later payment is
different: the service reads its credit features after applying the earlier events of the
same instant. The features shared with the fraud vector are taken from it (same definition,
same instant, same predecessors); the credit-only account windows get the same-instant
predecessors added back (`_same_instant_correction`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from risk_service.features import (
    CREDIT_FEATURE_NAMES,
    FEATURE_NAMES,
    compute_offline_credit_features,
)
from risk_service.features import derived as d

_FRAUD_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_FROM_FRAUD_VECTOR = (
    "account_events_30d",
    "account_distinct_devices_30d",
    "seconds_since_account_previous_event",
    "account_known_frauds_90d",
)
# credit-only account windows: (feature, event filter, count or amount)
_CREDIT_ONLY = (
    ("account_events_90d", "all", "count"),
    ("account_bill_pay_events_90d", "bill_pay", "count"),
    ("account_top_up_amount_90d", "top_up", "amount"),
    ("account_withdrawal_amount_90d", "withdrawal", "amount"),
    ("account_spend_amount_90d", "payment", "amount"),
    ("account_credit_line_amount_30d", "credit_line", "amount"),
)


def _filter(events: pd.DataFrame, name: str) -> np.ndarray:
    n = len(events)
    if name == "all":
        return np.ones(n, dtype=bool)
    if name == "credit_line":
        if "funding_source" not in events.columns:
            return np.zeros(n, dtype=bool)
        return (events["funding_source"] == "credit_line").to_numpy(bool)
    return (events["event_type"] == name).to_numpy(bool)


def _same_instant_correction(
    events: pd.DataFrame, ms: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Per credit-only feature, what earlier events of the same account at the same instant
    add (counts, or amounts in minor units) for each of `rows`; empty when there are none."""
    frame = pd.DataFrame({"a": events["account_id"].to_numpy(), "t": ms})
    tied = frame.duplicated(["a", "t"], keep=False).to_numpy()
    if not tied[rows].any():
        return {}
    idx = np.flatnonzero(tied)
    group = frame.iloc[idx].groupby(["a", "t"], sort=False).ngroup().to_numpy()
    minor = d.minors(events["amount"].to_numpy(float)[idx])
    pos = np.full(len(events), -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    out: dict[str, np.ndarray] = {}
    for feature, flt, value in _CREDIT_ONLY:
        contrib = _filter(events, flt)[idx].astype(np.int64)
        if value == "amount":
            contrib = contrib * minor
        # exclusive cumulative sum within each (account, instant) group, in canonical order
        s = pd.Series(contrib).groupby(group).cumsum().to_numpy() - contrib
        add = np.zeros(len(rows), dtype=np.int64)
        p = pos[rows]
        add[p >= 0] = s[p[p >= 0]]
        out[feature] = add
    return out


def credit_payment_features(
    events: pd.DataFrame, accounts: pd.DataFrame | None, X: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """CREDIT_FEATURE_NAMES matrix for the pay-later payments `events.iloc[rows]`, as
    `OnlineFeatureEngine.credit_features` gives them just before each payment.

    `events` is in canonical order (stable by timestamp); `X` is its fraud feature matrix.
    Only the paying accounts' events are read: every credit feature is an account feature.
    """
    out = np.full((len(rows), len(CREDIT_FEATURE_NAMES)), np.nan)
    if len(rows) == 0:
        return out
    ms = d.times_ms(events["timestamp"].reset_index(drop=True))
    payers = events["account_id"].to_numpy()[rows]
    mine = events["account_id"].isin(pd.unique(payers)).to_numpy()
    apps = pd.DataFrame(
        {
            "timestamp": events["timestamp"].to_numpy()[rows],
            "account_id": payers,
            "requested_limit": events["amount"].to_numpy(float)[rows],
        }
    )
    credit = compute_offline_credit_features(events[mine], accounts, apps)
    index = {name: j for j, name in enumerate(CREDIT_FEATURE_NAMES)}
    out[:] = credit.to_numpy(np.float64)
    for name in _FROM_FRAUD_VECTOR:
        out[:, index[name]] = X[rows, _FRAUD_INDEX[name]]
    corrections = _same_instant_correction(events, ms, rows)
    for feature, _, value in _CREDIT_ONLY:
        if feature not in corrections:
            continue
        j, add = index[feature], corrections[feature]
        if value == "count":
            out[:, j] = out[:, j] + add
        else:
            base = np.rint(out[:, j] * 100.0).astype(np.int64)
            out[:, j] = (base + add) / 100.0
    if corrections:
        j = index["credit_line_utilisation_30d"]
        limit = X[rows, _FRAUD_INDEX["credit_limit"]]
        out[:, j] = d.safe_div_vec(out[:, index["account_credit_line_amount_30d"]], limit)
    return out
