"""The synthetic payment world: accounts with habits, merchants, fraud scenarios, credit outcomes.

`generate_world` returns the three canonical tables in memory; `simulate` writes them (plus a
manifest) to a directory. Both are deterministic: the same arguments give the same bytes.
See docs/simulator.md for the world, its habits and every fraud scenario's traces.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from .build import build_tables, summary
from .config import (
    CHARGEBACK_WINDOW_DAYS,
    CREDIT_GRACE_DAYS,
    CREDIT_PERFORMANCE_DAYS,
    DEFAULT_FRAUD_RATE,
    FORMATS,
    FRAUD_DELAY_MAX_DAYS,
    FRAUD_DELAY_MEDIAN_DAYS,
    MAX_FRAUD_RATE,
    MIN_ACCOUNTS,
    MIN_DAYS,
)
from .writer import write_all

__all__ = ["DEFAULT_START", "World", "generate_world", "simulate", "validate_args"]

DEFAULT_START = date(2026, 8, 1)


@dataclass(frozen=True)
class World:
    """The canonical tables (see risk_service.schema) of one simulated world."""

    events: pd.DataFrame
    accounts: pd.DataFrame
    credit: pd.DataFrame


def validate_args(
    accounts: int, days: int, seed: int, fmt: str = "parquet", fraud_rate: float | None = None
) -> None:
    """Raise ValueError naming the offending argument (the CLI turns it into exit status 2)."""
    for name, value, low in (("accounts", accounts, MIN_ACCOUNTS), ("days", days, MIN_DAYS)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fraud_rate is not None and not (0 < fraud_rate <= MAX_FRAUD_RATE):
        raise ValueError(f"fraud_rate must be in (0, {MAX_FRAUD_RATE}], got {fraud_rate!r}")


def generate_world(
    accounts: int = 10_000,
    days: int = 120,
    seed: int = 0,
    start: date = DEFAULT_START,
    fraud_rate: float | None = None,
    progress: bool = False,
) -> World:
    """Simulate in memory and return pandas DataFrames with the schema's dtypes."""
    validate_args(accounts, days, seed, "parquet", fraud_rate)
    t = build_tables(accounts, days, seed, start, fraud_rate, progress)
    return World(t.events.to_pandas(), t.accounts.to_pandas(), t.credit.to_pandas())


def simulate(
    out_dir: Path,
    *,
    accounts: int = 10_000,
    days: int = 120,
    seed: int = 0,
    start: date = DEFAULT_START,
    fmt: str = "parquet",
    fraud_rate: float | None = None,
    progress: bool = False,
) -> dict:
    """Write events, accounts, credit and manifest.json into out_dir; return the manifest."""
    validate_args(accounts, days, seed, fmt, fraud_rate)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=".simulate-parts-", dir=out_dir))
    try:
        t = build_tables(accounts, days, seed, start, fraud_rate, progress, spill_dir=spill)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    manifest = {
        "generator": "training.simulate",
        "arguments": {
            "accounts": accounts,
            "days": days,
            "seed": seed,
            "start": start.isoformat(),
            "fmt": fmt,
            "fraud_rate": fraud_rate,
        },
        "target_fraud_rate": fraud_rate or DEFAULT_FRAUD_RATE,
        "label_delays_days": {
            "fraud_median": FRAUD_DELAY_MEDIAN_DAYS,
            "fraud_max": FRAUD_DELAY_MAX_DAYS,
            "chargeback_window": CHARGEBACK_WINDOW_DAYS,
            "credit_performance": CREDIT_PERFORMANCE_DAYS + CREDIT_GRACE_DAYS,
        },
        **summary(t),
    }
    tables = {"events": t.events, "accounts": t.accounts, "credit": t.credit}
    return write_all(out_dir, tables, fmt, manifest)
