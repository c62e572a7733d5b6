"""Offline features: a whole events table -> feature matrix, point-in-time, vectorised.

Canonical order is a stable sort on timestamp (ties keep input order); each row sees
only rows before it in that order, labels with ``label_time`` strictly before its
timestamp, and the accounts table.  Results equal an ``OnlineFeatureEngine`` replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from risk_service.features import derived as d
from risk_service.features.kernels import (
    SortedRows,
    distinct_members,
    previous_in_group,
    window_start_rank,
)
from risk_service.features.spec import (
    CATEGORIES,
    CREDIT_FEATURE_NAMES,
    DAY_MS,
    DISTINCT_CAP,
    DISTINCTS,
    ENTITY_KEYS,
    FEATURE_NAMES,
    HOUR_MS,
    LABELS,
    MIN_TRAVEL_MS,
    ROLLINGS,
    ROUND_AMOUNT_MINOR,
    SMALL_AMOUNT_MINOR,
    TIME_SINCE,
    Window,
)

_SHARED_ACCOUNT_COLS = ("account_id", "payee_account_id")  # one code space: inflow queries


@dataclass
class _Table:
    """Columns as arrays in canonical order; ids as integer codes (-1 = missing)."""

    ms: np.ndarray
    is_data: np.ndarray
    codes: dict[str, np.ndarray]
    cols: dict[str, np.ndarray]  # raw columns that are read as values
    account_ids: np.ndarray  # original account ids (for the profile join)

    @property
    def n(self) -> int:
        return len(self.ms)


def _column(df: pd.DataFrame, name: str) -> pd.Series | None:
    return df[name] if name in df.columns else None


def _missing(s: pd.Series) -> np.ndarray:
    m = s.isna().to_numpy().copy()
    if not pd.api.types.is_numeric_dtype(s.dtype):
        m |= (s.astype(object) == "").to_numpy()
    return m


def _factorize(frame: pd.DataFrame, order: np.ndarray) -> dict[str, np.ndarray]:
    n = len(frame)
    codes: dict[str, np.ndarray] = {}
    shared = [c for c in _SHARED_ACCOUNT_COLS]
    parts = []
    for c in shared:
        s = _column(frame, c)
        parts.append(pd.Series([None] * n, dtype=object) if s is None else s.reset_index(drop=True))
    both = pd.concat(parts, ignore_index=True)
    miss = _missing(both)
    cb = pd.factorize(both.astype(object).where(~miss, None), use_na_sentinel=True)[0]
    for i, c in enumerate(shared):
        codes[c] = cb[i * n : (i + 1) * n].astype(np.int64)[order]
    for c in set(ENTITY_KEYS.values()) - set(shared):
        s = _column(frame, c)
        if s is None:
            codes[c] = np.full(n, -1, dtype=np.int64)
            continue
        miss = _missing(s)
        cc = pd.factorize(s.astype(object).where(~miss, None), use_na_sentinel=True)[0]
        codes[c] = cc.astype(np.int64)[order]
    return codes


def _prepare(frame: pd.DataFrame, is_data: np.ndarray, order: np.ndarray) -> _Table:
    """Arrays of ``frame`` reordered by ``order`` (canonical order)."""
    n = len(frame)
    ms = d.times_ms(frame["timestamp"].reset_index(drop=True))[order]
    cols: dict[str, np.ndarray] = {}
    for c in ("amount", "latitude", "longitude"):
        s = _column(frame, c)
        cols[c] = np.full(n, np.nan) if s is None else pd.to_numeric(s).to_numpy(float)[order]
    for c, values in CATEGORIES.items():
        s = _column(frame, c)
        codes = np.full(n, np.nan)
        if s is not None:
            codes = pd.Index(list(values)).get_indexer(pd.Index(s.astype(object))).astype(float)
            codes = np.where(codes < 0, np.nan, codes)[order]
        cols[c] = codes
    fraud, label = _column(frame, "is_fraud"), _column(frame, "label_time")
    if fraud is not None and label is not None:
        lab_ms = d.times_ms(label.reset_index(drop=True))[order]
        known = ~label.isna().to_numpy()[order]
        f = pd.to_numeric(fraud).fillna(0).to_numpy(float)[order] == 1
        cols["fraud_label_ms"] = np.where(known & f & is_data, lab_ms, -1)
    return _Table(
        ms, is_data, _factorize(frame, order), cols, frame["account_id"].to_numpy()[order]
    )


def _request(t: _Table, out: dict[str, np.ndarray]) -> None:
    amount = t.cols["amount"]
    minor = d.minors(np.nan_to_num(amount))
    out["amount"] = amount
    for c in CATEGORIES:
        out[c] = t.cols[c]
    out["hour_of_day"] = (t.ms // HOUR_MS % 24).astype(float)
    out["day_of_week"] = ((t.ms // DAY_MS + 3) % 7).astype(float)
    out["amount_is_round"] = ((minor >= ROUND_AMOUNT_MINOR) & (minor % 10_000 == 0)).astype(float)
    out["amount_is_small"] = (minor <= SMALL_AMOUNT_MINOR).astype(float)


def _filters(t: _Table) -> dict[str, np.ndarray]:
    et = t.cols["event_type"]
    code = {v: float(i) for i, v in enumerate(CATEGORIES["event_type"])}
    minor = d.minors(np.nan_to_num(t.cols["amount"]))
    pay = et == code["payment"]
    return {
        "all": t.is_data,
        "payment": t.is_data & pay,
        "small_payment": t.is_data & pay & (minor <= SMALL_AMOUNT_MINOR),
        "bill_pay": t.is_data & (et == code["bill_pay"]),
        "top_up": t.is_data & (et == code["top_up"]),
        "withdrawal": t.is_data & (et == code["withdrawal"]),
        "credit_line": t.is_data & (t.cols["funding_source"] == CATEGORIES["funding_source"].index(
            "credit_line")),
    }  # fmt: skip


def _rolling(t: _Table, want: set[str], out: dict[str, np.ndarray]) -> None:
    filters = _filters(t)
    minor = d.minors(np.nan_to_num(t.cols["amount"]))
    ranks = np.arange(t.n, dtype=np.int64)
    starts: dict[Window, np.ndarray] = {}
    data: dict[tuple[str, str], tuple[SortedRows, np.ndarray]] = {}
    q_orders: dict[str, np.ndarray] = {}
    bounds: dict[tuple[str, str, Window, str], tuple[np.ndarray, np.ndarray]] = {}
    for r in ROLLINGS:
        key_col = ENTITY_KEYS[r.state]
        if r.window not in starts:
            starts[r.window] = window_start_rank(t.ms, r.window)
        for o in r.outputs:
            if o.feature not in want:
                continue
            flt, value = r.channels[o.channel]
            if (key_col, flt) not in data:
                rows = SortedRows(t.codes[key_col], filters[flt], t.n)
                data[(key_col, flt)] = (rows, rows.prefix(minor))
            rows, csum = data[(key_col, flt)]
            q = t.codes[o.query]
            if o.query not in q_orders:
                q_orders[o.query] = np.argsort(q, kind="stable")
            bkey = (key_col, flt, r.window, o.query)
            if bkey not in bounds:
                bounds[bkey] = rows.bounds(q, starts[r.window], ranks, q_orders[o.query])
            lo, hi = bounds[bkey]
            x = (hi - lo).astype(float) if value == "count" else (csum[hi] - csum[lo]) / 100.0
            out[o.feature] = np.where(q >= 0, x, np.nan)


def _distinct(t: _Table, want: set[str], out: dict[str, np.ndarray]) -> None:
    for x in DISTINCTS:
        feats = [(f, w) for f, w in x.windows if f in want]
        if not feats and x.first_seen not in want:
            continue
        ent = t.codes[ENTITY_KEYS[x.state]]
        first, counts = distinct_members(
            ent, t.codes[x.member], t.is_data, t.ms, [w for _, w in feats], x.horizon, DISTINCT_CAP
        )
        for i, (f, _) in enumerate(feats):
            out[f] = counts[i]
        if x.first_seen in want:
            out[x.first_seen] = first


def _labels(t: _Table, want: set[str], out: dict[str, np.ndarray]) -> None:
    label_ms = t.cols.get("fraud_label_ms")
    for lab in LABELS:
        if lab.feature not in want:
            continue
        q = t.codes[ENTITY_KEYS[lab.state]]
        if label_ms is None:
            out[lab.feature] = np.where(q >= 0, 0.0, np.nan)
            continue
        b, nb = lab.window.bucket_ms, lab.window.n_buckets
        lo_ms = (t.ms // b - nb + 1) * b
        has = (label_ms >= 0) & (q >= 0)
        base = min(int(lo_ms.min()), int(label_ms[has].min()) if has.any() else int(lo_ms.min()))
        span = max(int(t.ms.max()), int(label_ms.max())) - base + 1
        ent = q[has]
        order = np.lexsort((label_ms[has], ent))
        comp = ent[order] * np.int64(span) + (label_ms[has][order] - base)
        qb = np.maximum(q, 0) * np.int64(span)
        lo = np.searchsorted(comp, qb + (lo_ms - base), side="left")
        hi = np.searchsorted(comp, qb + (t.ms - base), side="left")
        out[lab.feature] = np.where(q >= 0, (hi - lo).astype(float), np.nan)


def _time_and_travel(t: _Table, want: set[str], out: dict[str, np.ndarray]) -> None:
    for kind, feat in TIME_SINCE.items():
        if feat in want:
            prev = previous_in_group(t.codes[ENTITY_KEYS[kind]], t.is_data)
            gap = (t.ms - t.ms[np.maximum(prev, 0)]) / 1000.0
            out[feat] = np.where(prev >= 0, gap, np.nan)
    if "km_from_previous_location" in want:
        lat, lon = t.cols["latitude"], t.cols["longitude"]
        located = ~np.isnan(lat) & ~np.isnan(lon)
        prev = previous_in_group(t.codes["account_id"], located & t.is_data)
        p = np.maximum(prev, 0)
        ok = located & (prev >= 0)
        km = np.where(ok, d.haversine_km_vec(lat[p], lon[p], lat, lon), np.nan)
        hours = np.maximum(t.ms - t.ms[p], MIN_TRAVEL_MS) / HOUR_MS
        out["km_from_previous_location"] = km
        out["speed_kmh_from_previous_location"] = km / hours


def _profile(t: _Table, accounts: pd.DataFrame | None, out: dict[str, np.ndarray]) -> None:
    nan = np.full(t.n, np.nan)
    if accounts is None or len(accounts) == 0:
        for f in ("account_age_days", "kyc_level", "holder_age", "monthly_income"):
            out[f] = nan
        out["credit_limit"], out["_home_lat"], out["_home_lon"] = nan, nan, nan
        return
    acc = accounts.drop_duplicates("account_id", keep="last").reset_index(drop=True)
    idx = pd.Index(acc["account_id"].astype(object)).get_indexer(t.account_ids.astype(object))
    found = idx >= 0
    ii = np.maximum(idx, 0)

    def take(col: str) -> np.ndarray:
        s = _column(acc, col)
        if s is None:
            return nan
        return np.where(found, pd.to_numeric(s).to_numpy(float)[ii], np.nan)

    created = acc["created_at"]
    cms = d.times_ms(created)[ii]
    ok = found & ~created.isna().to_numpy()[ii] & (cms <= t.ms)
    out["account_age_days"] = np.where(ok, (t.ms - cms) / DAY_MS, np.nan)
    out["kyc_level"], out["holder_age"] = take("kyc_level"), take("age")
    out["monthly_income"], out["credit_limit"] = take("monthly_income"), take("credit_limit")
    out["_home_lat"], out["_home_lon"] = take("home_latitude"), take("home_longitude")


def _compute(
    t: _Table, accounts: pd.DataFrame | None, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    want = set(names) | {
        "account_events_30d", "account_amount_30d", "instrument_events_30d",
        "instrument_amount_30d", "merchant_events_7d", "merchant_amount_7d",
        "merchant_events_30d",
    }  # fmt: skip
    out: dict[str, np.ndarray] = {}
    _request(t, out)
    _rolling(t, want, out)
    _distinct(t, want, out)
    _labels(t, want, out)
    _time_and_travel(t, want, out)
    _profile(t, accounts, out)
    amount = t.cols["amount"]
    out["amount_to_account_mean_30d"] = d.ratio_to_mean_vec(
        amount, out["account_events_30d"], out["account_amount_30d"]
    )
    out["amount_to_instrument_mean_30d"] = d.ratio_to_mean_vec(
        amount, out["instrument_events_30d"], out["instrument_amount_30d"]
    )
    out["amount_to_merchant_mean_7d"] = d.ratio_to_mean_vec(
        amount, out["merchant_events_7d"], out["merchant_amount_7d"]
    )
    if "merchant_known_frauds_30d" in out:
        rate = out["merchant_known_frauds_30d"] / np.maximum(1.0, out["merchant_events_30d"])
        out["merchant_known_fraud_rate_30d"] = rate
    lat, lon = t.cols["latitude"], t.cols["longitude"]
    out["km_from_home"] = d.haversine_km_vec(out["_home_lat"], out["_home_lon"], lat, lon)
    out["amount_to_monthly_income"] = d.safe_div_vec(amount, out["monthly_income"])
    return out


def compute_offline_features(
    events: pd.DataFrame, accounts: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Fraud features (FEATURE_NAMES) of every event, same row order and index as ``events``."""
    n = len(events)
    ms = d.times_ms(events["timestamp"].reset_index(drop=True))
    order = np.argsort(ms, kind="stable")
    t = _prepare(events, np.ones(n, dtype=bool), order)
    out = _compute(t, accounts, FEATURE_NAMES)
    matrix = np.empty((len(FEATURE_NAMES), n), dtype=np.float64)  # one row per feature
    for j, name in enumerate(FEATURE_NAMES):
        matrix[j, order] = out[name]
    return pd.DataFrame(matrix.T, columns=list(FEATURE_NAMES), index=events.index, copy=False)


def compute_offline_credit_features(
    events: pd.DataFrame, accounts: pd.DataFrame | None, applications: pd.DataFrame
) -> pd.DataFrame:
    """Credit features (CREDIT_FEATURE_NAMES) per application, from events strictly before it.

    Applications become query-only rows placed before events with the same timestamp.
    """
    n_e, n_a = len(events), len(applications)
    cols = [c for c in events.columns if c != "requested_limit"]
    apps = pd.DataFrame(
        {"timestamp": applications["timestamp"].to_numpy(), "account_id": applications[
            "account_id"].to_numpy()}
    )  # fmt: skip
    frame = pd.concat([events[cols].reset_index(drop=True), apps], ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    is_data = np.r_[np.ones(n_e, dtype=bool), np.zeros(n_a, dtype=bool)]
    ms = d.times_ms(frame["timestamp"])
    order = np.lexsort((np.arange(n_e + n_a), is_data, ms))
    t = _prepare(frame, is_data[order], order)
    out = _compute(t, accounts, CREDIT_FEATURE_NAMES)
    pos = np.empty(n_e + n_a, dtype=np.int64)
    pos[order] = np.arange(n_e + n_a)
    rows = pos[n_e:]
    requested = pd.to_numeric(applications["requested_limit"]).to_numpy(float)
    res = {name: out[name][rows] for name in CREDIT_FEATURE_NAMES if name in out}
    res["requested_limit"] = requested
    res["requested_to_income"] = d.safe_div_vec(requested, res["monthly_income"])
    res["credit_line_utilisation_30d"] = d.safe_div_vec(
        res["account_credit_line_amount_30d"], res["credit_limit"]
    )
    return pd.DataFrame(
        {name: res[name] for name in CREDIT_FEATURE_NAMES}, index=applications.index
    ).astype(np.float64)
