"""Simulator data quality: schema, labels, determinism, formats, arguments, atomic writes."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risk_service import schema
from training.simulate import World, generate_world, simulate, validate_args
from training.simulate import writer as sim_writer

SMALL = {"accounts": 500, "days": 60, "seed": 0}
PANDAS_DTYPE = {
    "timestamp": "datetime64[us, UTC]",
    "int8": "int8",
    "int32": "int32",
    "int64": "int64",
    "float64": "float64",
}


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(**SMALL)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim")
    return out, simulate(out, **SMALL)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("table", ["events", "accounts", "credit"])
def test_columns_and_dtypes_follow_schema(world: World, table: str) -> None:
    df = getattr(world, table)
    assert list(df.columns) == schema.column_names(table)
    for col in schema.columns(table):
        if col.dtype == "string":
            assert pd.api.types.is_string_dtype(df[col.name]), col.name
        else:
            assert str(df[col.name].dtype) == PANDAS_DTYPE[col.dtype], col.name
        if col.required:
            assert df[col.name].notna().all(), col.name
        if col.allowed is not None:
            values = set(df[col.name].dropna().unique())
            assert values <= set(col.allowed), (col.name, values - set(col.allowed))


def test_events_sorted_unique_and_labelled(world: World) -> None:
    e = world.events
    assert e["event_id"].is_unique
    assert e["timestamp"].is_monotonic_increasing
    assert (e["label_time"] >= e["timestamp"]).all()
    assert (e["amount"] > 0).all()
    assert np.allclose(e["amount"], e["amount"].round(2))
    fraud = e["is_fraud"] == 1
    assert e.loc[fraud, "fraud_scenario"].notna().all()
    assert e.loc[~fraud, "fraud_scenario"].isna().all()
    delay = (e.loc[fraud, "label_time"] - e.loc[fraud, "timestamp"]).dt.days
    assert 5 <= delay.median() <= 15 and delay.max() <= 45
    good_delay = e.loc[~fraud, "label_time"] - e.loc[~fraud, "timestamp"]
    assert (good_delay == pd.Timedelta(days=45)).all()


def test_fraud_rate_and_every_scenario_present(world: World) -> None:
    e = world.events
    assert 0.002 <= e["is_fraud"].mean() <= 0.012
    counts = e["fraud_scenario"].value_counts()
    for scenario in schema.FRAUD_SCENARIOS:
        assert counts.get(scenario, 0) >= 3, scenario


def test_fraud_rate_argument_scales_fraud() -> None:
    low = generate_world(**SMALL, fraud_rate=0.003).events["is_fraud"].mean()
    high = generate_world(**SMALL, fraud_rate=0.03).events["is_fraud"].mean()
    assert high > 4 * low


def test_calendar_effects(world: World) -> None:
    e = generate_world(accounts=500, days=120, seed=1).events
    per_day = e.groupby(e["timestamp"].dt.date).size()
    assert per_day[date(2026, 11, 11)] > 2 * per_day.median()
    month_end = per_day[[d for d in per_day.index if d.day >= 26]].mean()
    mid = per_day[[d for d in per_day.index if 10 <= d.day <= 20]].mean()
    assert month_end > 1.05 * mid


def test_accounts_and_credit_tables(world: World) -> None:
    acc, cr = world.accounts, world.credit
    assert acc["account_id"].is_unique and len(acc) == SMALL["accounts"]
    assert set(world.events["account_id"]) <= set(acc["account_id"])
    start = pd.Timestamp("2026-08-01", tz="UTC")
    assert (acc["created_at"] < start).mean() > 0.6 and (acc["created_at"] >= start).any()
    assert (acc["credit_limit"] >= 0).all() and (acc["credit_limit"] > 0).any()
    assert cr["application_id"].is_unique
    assert set(cr["account_id"]) <= set(acc["account_id"])
    window = cr["label_time"] - cr["timestamp"]
    assert (window >= pd.Timedelta(days=90)).all() and (window <= pd.Timedelta(days=100)).all()


def test_written_files_and_manifest(written: tuple[Path, dict]) -> None:
    out, manifest = written
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["arguments"]["accounts"] == SMALL["accounts"]
    for name in ("events", "accounts", "credit"):
        path = out / f"{name}.parquet"
        assert manifest["files"][name]["sha256"] == _sha(path)
        assert manifest["rows"][name] == len(pd.read_parquet(path))
    assert set(manifest["scenarios"]) == set(schema.FRAUD_SCENARIOS)
    assert sorted(p.name for p in out.iterdir()) == [
        "accounts.parquet",
        "credit.parquet",
        "events.parquet",
        "manifest.json",
    ]
    events = pd.read_parquet(out / "events.parquet")
    assert str(events["timestamp"].dtype) == "datetime64[us, UTC]"


def test_deterministic(written: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = written
    again = simulate(tmp_path, **SMALL)
    assert again == manifest
    for name in ("events.parquet", "accounts.parquet", "credit.parquet", "manifest.json"):
        assert _sha(tmp_path / name) == _sha(out / name)
    other = simulate(tmp_path / "other", **{**SMALL, "seed": 1})
    assert other["files"]["events"]["sha256"] != manifest["files"]["events"]["sha256"]


def test_csv_format(tmp_path: Path, world: World) -> None:
    manifest = simulate(tmp_path, **SMALL, fmt="csv")
    events = pd.read_csv(tmp_path / "events.csv")
    assert list(events.columns) == schema.column_names("events")
    assert len(events) == len(world.events) == manifest["rows"]["events"]
    assert events["timestamp"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$").all()
    parsed = pd.to_datetime(events["timestamp"], utc=True)
    assert (parsed.to_numpy() == world.events["timestamp"].to_numpy()).all()
    assert events["fraud_scenario"].isna().sum() == (world.events["is_fraud"] == 0).sum()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"accounts": 0}, "accounts"),
        ({"accounts": -5}, "accounts"),
        ({"days": 0}, "days"),
        ({"days": -1}, "days"),
        ({"seed": -1}, "seed"),
        ({"fmt": "xlsx"}, "fmt"),
        ({"fraud_rate": 0.0}, "fraud_rate"),
        ({"fraud_rate": 0.5}, "fraud_rate"),
        ({"fraud_rate": -0.1}, "fraud_rate"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"accounts": 500, "days": 60, "seed": 0, "fmt": "parquet", "fraud_rate": None, **kwargs}
    with pytest.raises(ValueError, match=name):
        validate_args(**args)
    with pytest.raises(ValueError, match=name):
        simulate(tmp_path, **args)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_previous_files(
    written: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sim"
    simulate(out, **SMALL)
    before = {p.name: _sha(p) for p in out.iterdir()}
    calls = {"n": 0}
    real = sim_writer.write_parquet

    def failing(table: object, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"half a file")
            raise OSError("disk full")
        real(table, path)  # type: ignore[arg-type]

    monkeypatch.setitem(sim_writer.WRITERS, "parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        simulate(out, **{**SMALL, "seed": 7})
    assert {p.name: _sha(p) for p in out.iterdir()} == before
