"""Pure per-event helpers shared by both paths: time and amount conversion, codes, distances.

Each formula is written once so that the online (Python floats) and offline (numpy)
results agree to the last bit where IEEE arithmetic allows it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from risk_service.features.spec import CATEGORIES, EARTH_RADIUS_KM

NAN = math.nan
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

CATEGORY_CODES: dict[str, dict[str, float]] = {
    col: {v: float(i) for i, v in enumerate(values)} for col, values in CATEGORIES.items()
}


def to_ms(ts: Any) -> int:
    """Integer milliseconds since the epoch (UTC, floored) of a Timestamp, datetime or ISO string.

    Naive datetimes are taken as UTC.
    """
    if isinstance(ts, pd.Timestamp):
        if ts.tzinfo is None:
            return int(ts.value // 1_000_000)
        return int(ts.tz_convert("UTC").value // 1_000_000)
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return (ts - _EPOCH) // _MS
    if isinstance(ts, str):
        try:
            return to_ms(datetime.fromisoformat(ts))
        except ValueError:
            return to_ms(pd.Timestamp(ts))
    if isinstance(ts, int | np.integer):
        return int(ts)
    raise TypeError(f"timestamp of type {type(ts).__name__} is not a Timestamp, datetime or str")


def times_ms(values: pd.Series) -> np.ndarray:
    """A timestamp column as int64 milliseconds since the epoch (UTC, floored); NaT -> min int."""
    ts = pd.to_datetime(values, utc=True, format="ISO8601") if values.dtype == object else values
    ts = pd.to_datetime(ts, utc=True)
    arr = ts.dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    return arr.astype(np.int64)


def to_minor(amount: float) -> int:
    """Amount in integer minor units, rounding half to even like numpy."""
    return round(amount * 100)


def minors(amounts: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(amounts, dtype=np.float64) * 100.0).astype(np.int64)


def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA and the empty string all mean 'not given'."""
    if value is None or value == "":
        return True
    if isinstance(value, float):
        return value != value
    return value is pd.NA or value is pd.NaT


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def haversine_km_vec(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2) ** 2
        + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def ratio_to_mean(amount: float, count: float, total: float) -> float:
    """amount / (total / count): against the window's mean; NaN without history or a zero sum."""
    if count != count or total != total or count <= 0 or total <= 0:
        return NAN
    return amount / (total / count)


def ratio_to_mean_vec(amount: np.ndarray, count: np.ndarray, total: np.ndarray) -> np.ndarray:
    ok = (count > 0) & (total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = amount / (total / count)
    return np.where(ok, out, np.nan)


def safe_div(num: float, den: float) -> float:
    """num / den, NaN when den is missing or not positive."""
    if den != den or num != num or den <= 0:
        return NAN
    return num / den


def safe_div_vec(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = den > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(ok, out, np.nan)
