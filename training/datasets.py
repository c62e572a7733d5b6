"""Reading the canonical tables, checking them against the contract, and honouring label time.

Training, backtesting and reports all read data through here, so a missing
column or a label from the future is caught in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from risk_service import schema

DEFAULT_LABEL_DELAY = pd.Timedelta(days=45)


class DataError(ValueError):
    """The input tables do not satisfy the data contract; the message says what to fix."""


@dataclass
class Tables:
    """The canonical tables as read from a directory; optional ones may be None."""

    events: pd.DataFrame | None
    accounts: pd.DataFrame | None = None
    credit: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def find_table(directory: Path, name: str) -> Path | None:
    """`name.parquet` or `name.csv` in `directory`, preferring Parquet."""
    for suffix in (".parquet", ".csv"):
        candidate = Path(directory) / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, low_memory=False)
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .parquet or .csv)")


def load_tables(
    directory: Path, *, label_delay: pd.Timedelta = DEFAULT_LABEL_DELAY, need_events: bool = True
) -> Tables:
    """Read events, accounts and credit from `directory`, validated and with types normalised."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--data {directory}: no such directory")
    notes: list[str] = []
    events_path = find_table(directory, "events")
    events = None
    if events_path is None:
        if need_events:
            raise DataError(f"--data {directory}: no events.parquet or events.csv")
        notes.append("no events table: fraud model not trained")
    else:
        events = normalise_events(read_table(events_path), label_delay=label_delay, notes=notes)
    accounts = None
    accounts_path = find_table(directory, "accounts")
    if accounts_path is None:
        notes.append("no accounts table: profile features (account age, KYC, income) are missing")
    else:
        accounts = normalise_table(read_table(accounts_path), "accounts")
    credit = None
    credit_path = find_table(directory, "credit")
    if credit_path is None:
        notes.append("no credit table: credit model not trained from events")
    else:
        credit = normalise_table(read_table(credit_path), "credit")
        if "defaulted" not in credit.columns:
            notes.append("credit table has no 'defaulted' column: credit model not trained")
            credit = None
        elif "label_time" not in credit.columns or credit["label_time"].isna().all():
            credit["label_time"] = credit["timestamp"] + pd.Timedelta(days=90)
            notes.append("credit table has no label_time: assumed timestamp + 90 days")
    return Tables(events=events, accounts=accounts, credit=credit, notes=notes)


def normalise_table(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Check required columns and coerce declared columns to their contract types."""
    missing = [c for c in schema.required_columns(table) if c not in frame.columns]
    if missing:
        raise DataError(f"{table} table lacks required column(s): {', '.join(missing)}")
    frame = frame.copy()
    for column in schema.columns(table):
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        try:
            if column.dtype == "timestamp":
                frame[column.name] = pd.to_datetime(values, utc=True, format="ISO8601")
            elif column.dtype == "string":
                frame[column.name] = values.astype("string").astype(object)
                frame.loc[values.isna(), column.name] = None
            elif column.dtype == "float64":
                frame[column.name] = pd.to_numeric(values, errors="raise").astype("float64")
            elif column.dtype.startswith("int"):
                numeric = pd.to_numeric(values, errors="raise")
                if column.required or not numeric.isna().any():
                    frame[column.name] = numeric.astype(np.dtype(column.dtype))
                else:
                    frame[column.name] = numeric.astype("float64")
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{table}.{column.name}: cannot read as {column.dtype} ({exc})"
            ) from None
    return frame


def normalise_events(
    frame: pd.DataFrame, *, label_delay: pd.Timedelta = DEFAULT_LABEL_DELAY, notes: list[str]
) -> pd.DataFrame:
    """Validate an events table and fill label_time where the data brought none."""
    frame = normalise_table(frame, "events")
    if frame["event_id"].duplicated().any():
        dup = frame.loc[frame["event_id"].duplicated(), "event_id"].iloc[0]
        raise DataError(f"events.event_id must be unique; {dup!r} appears more than once")
    if frame["timestamp"].isna().any():
        raise DataError("events.timestamp has missing values")
    amounts = frame["amount"].to_numpy()
    if not np.all(np.isfinite(amounts)) or (amounts <= 0).any():
        raise DataError("events.amount must be finite and > 0")
    unknown = set(frame["event_type"].dropna().unique()) - set(schema.EVENT_TYPES)
    if unknown:
        raise DataError(
            f"events.event_type has unknown values {sorted(unknown)[:5]}; "
            f"expected {list(schema.EVENT_TYPES)}"
        )
    if "is_fraud" not in frame.columns:
        notes.append("events have no is_fraud labels: fraud model not trained")
    else:
        assumed = frame["timestamp"] + label_delay
        if "label_time" not in frame.columns:
            frame["label_time"] = assumed
            missing_lt = pd.Series(True, index=frame.index)
        else:
            missing_lt = frame["label_time"].isna()
            frame["label_time"] = pd.to_datetime(frame["label_time"], utc=True).fillna(assumed)
        if missing_lt.any():
            notes.append(
                f"{int(missing_lt.sum())} events had no label_time: assumed timestamp + "
                f"{label_delay}"
            )
        if (frame["label_time"] < frame["timestamp"]).any():
            raise DataError("events.label_time must not be before timestamp")
    optional = [c.name for c in schema.EVENT_COLUMNS if not c.required and not c.label]
    absent = [c for c in optional if c not in frame.columns]
    if absent:
        notes.append("events lack optional column(s): " + ", ".join(absent))
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def labels_known_by(frame: pd.DataFrame, cutoff: pd.Timestamp, label: str) -> pd.Series:
    """Labels as known at `cutoff`: the label where label_time < cutoff, else missing (NaN)."""
    known = frame["label_time"] < cutoff
    return frame[label].where(known).astype("float64")


@dataclass(frozen=True)
class TimeSplit:
    """Train, gap, validation and test periods; each is [start, end)."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    valid_start: pd.Timestamp
    valid_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def as_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.__dict__.items()}
