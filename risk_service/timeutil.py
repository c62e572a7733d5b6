"""Parsing and converting instants: ISO 8601 in, UTC out, integer milliseconds inside.

A time without a zone is UTC, on the command line and in requests alike.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 date or date-time; naive means UTC. Raises ValueError naming the input."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not an ISO 8601 date or date-time: {text!r}")
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 date or date-time: {text!r} (expected e.g. 2026-08-01 or "
            "2026-08-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_date(text: str) -> date:
    """Parse YYYY-MM-DD."""
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"not an ISO 8601 date (YYYY-MM-DD): {text!r}") from None


def to_millis(value: object) -> int:
    """Milliseconds since the epoch (UTC) of a datetime, pandas Timestamp or ISO string."""
    if isinstance(value, str):
        value = parse_instant(value)
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None:
            value = value.tz_localize("UTC")
        return int(value.value // 1_000_000)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(pd.Timestamp(value).value // 1_000_000)
    raise TypeError(f"cannot read an instant from {type(value).__name__}")


def ms_to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime (exact: no float on the way)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds: 2026-11-25T13:00:00.000Z."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
