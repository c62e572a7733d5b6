"""`risk backtest`: what candidate models and policies would have decided on history.

Features are computed point-in-time over the whole history (windows warm up on events
before --from), then the events in [--from, --to) are decided by each candidate
(versions x policies) with the service's own decision logic (`backtest_scoring`),
chunk by chunk, into `decisions.parquet`; `summary.json` and `report.html` compare the
candidates in money. Labels are read only to measure, as known at the end of the data.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from risk_service import features as fs
from risk_service.bundles import BundleError, Registry, VerifiedBundle, verify_bundle
from risk_service.credit_model import CreditModel
from risk_service.fraud_model import FraudModel
from risk_service.policy import Policy, default_policy_path
from risk_service.scoring import ScoringSettings
from training.backtest_features import credit_payment_features
from training.backtest_scoring import Candidate, decide_chunk, request_events
from training.config import load_config
from training.datasets import DataError, load_tables

Log = Callable[[str], None] | None
KINDS = ("fraud", "credit")
# Output columns per candidate and their Parquet types (fixed, so every chunk agrees).
PER_CANDIDATE: dict[str, pa.DataType] = {
    "fraud_probability": pa.float64(), "fraud_score": pa.int64(), "fraud_band": pa.string(),
    "decision": pa.string(), "rules_fired": pa.string(), "reasons": pa.string(),
    "probability_of_default": pa.float64(), "credit_score": pa.float64(),
    "credit_band": pa.string(), "credit_decision": pa.string(),
    "recommended_limit": pa.float64(), "within_limit": pa.bool_(), "credit_reasons": pa.string(),
}  # fmt: skip


@dataclass
class BacktestRun:
    """What the report needs, kept in memory as small arrays (not the decision texts)."""

    candidates: list[Candidate]
    events: pd.DataFrame  # the scored events: ids, amounts, labels (no features)
    decisions: dict[str, np.ndarray]  # candidate -> decision codes (DECISIONS index)
    probabilities: dict[str, np.ndarray]
    credit_pd: dict[str, np.ndarray]  # candidate -> PD per event (NaN where not credit)
    credit_decision: dict[str, np.ndarray]  # candidate -> object array (None where not credit)
    labels_as_of: pd.Timestamp
    start: pd.Timestamp
    end: pd.Timestamp
    config: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _say(log: Log, message: str) -> None:
    if log is not None:
        log(message)


def parse_versions(specs: Sequence[str]) -> list[dict[str, str]]:
    """`fraud=V,credit=W` per --version; a kind left out means its champion."""
    out: list[dict[str, str]] = []
    for spec in specs:
        chosen: dict[str, str] = {}
        for part in spec.split(","):
            kind, sep, version = part.strip().partition("=")
            if not sep or kind not in KINDS or not version:
                raise DataError(
                    f"--version {spec!r}: expected fraud=VERSION and/or credit=VERSION, "
                    "comma-separated"
                )
            chosen[kind] = version
        out.append(chosen)
    return out or [{}]


def _bundle(registry: Registry, kind: str, version: str) -> VerifiedBundle:
    if version not in registry.versions(kind):
        known = ", ".join(registry.versions(kind)) or "none"
        raise DataError(
            f"--version {kind}={version}: unknown {kind} model version in "
            f"{registry.models_dir} (known: {known})"
        )
    return verify_bundle(registry.bundle_dir(kind, version), expected_kind=kind)


def load_models(
    models_dir: Path, chosen: dict[str, str], notes: list[str]
) -> tuple[FraudModel, CreditModel | None]:
    """Verified bundles as `service.load_champions` loads them; explicit or champion versions."""
    registry = Registry(models_dir)
    fraud_version = chosen.get("fraud") or registry.champion("fraud")
    if fraud_version is None:
        raise BundleError(f"no fraud champion in {models_dir}: pass --version fraud=V")
    _bundle(registry, "fraud", fraud_version)
    fraud = FraudModel(
        verify_bundle(
            registry.bundle_dir("fraud", fraud_version),
            expected_kind="fraud",
            feature_set_version=fs.FEATURE_SET_VERSION,
            feature_names=fs.FEATURE_NAMES,
        )
    )
    credit_version = chosen.get("credit") or registry.champion("credit")
    if credit_version is None:
        return fraud, None
    bundle = _bundle(registry, "credit", credit_version)
    if bundle.manifest.get("feature_source", "events") != "events":
        if "credit" in chosen:
            raise DataError(
                f"--version credit={credit_version}: this bundle scores application tables, "
                "not events; use it with --credit-data"
            )
        notes.append(f"credit champion {credit_version} scores tables, not events: not used")
        return fraud, None
    bundle = verify_bundle(
        bundle.directory,
        expected_kind="credit",
        feature_set_version=fs.FEATURE_SET_VERSION,
        feature_names=fs.CREDIT_FEATURE_NAMES,
    )
    return fraud, CreditModel(bundle)


def load_candidates(
    models_dir: Path, versions: Sequence[str], policies: Sequence[Path], notes: list[str]
) -> list[Candidate]:
    """The cartesian product of model versions and policy files, named c1, c2, ..."""
    from risk_service.service import load_policy

    models = [load_models(models_dir, chosen, notes) for chosen in parse_versions(versions)]
    loaded: list[Policy] = [load_policy(str(p)) for p in policies] or [
        load_policy(str(default_policy_path()))
    ]
    return [
        Candidate(f"c{i + 1}", fraud, credit, policy)
        for i, ((fraud, credit), policy) in enumerate(itertools.product(models, loaded))
    ]


def select_period(
    events: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> tuple[np.ndarray, pd.Timestamp, pd.Timestamp]:
    """Row positions of [start, end) in the (time-sorted) events; an empty range is an error."""
    ts = events["timestamp"]
    lo = start if start is not None else ts.iloc[0]
    hi = end if end is not None else ts.iloc[-1] + pd.Timedelta(microseconds=1)
    if lo >= hi:
        raise DataError(f"empty date range: --from {lo.isoformat()} is not before --to {hi}")
    rows = np.flatnonzero(((ts >= lo) & (ts < hi)).to_numpy())
    if len(rows) == 0:
        raise DataError(
            f"empty date range: no events in [{lo.isoformat()}, {hi.isoformat()}); the data "
            f"covers {ts.iloc[0].isoformat()} to {ts.iloc[-1].isoformat()}"
        )
    return rows, pd.Timestamp(lo), pd.Timestamp(hi)


def _as_utc(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def compute_features(
    events: pd.DataFrame, accounts: pd.DataFrame | None, scheduler: str | None, log: Log
) -> np.ndarray:
    """The fraud feature matrix of every event (point-in-time), on one process or on Dask."""
    if scheduler is None:
        return fs.compute_offline_features(events, accounts).to_numpy(np.float64)
    from training.backtest_dask import compute_features_on_dask

    _say(log, f"features on Dask ({scheduler})")
    try:
        return compute_features_on_dask(events, accounts, scheduler)
    except OSError as exc:  # an unreachable scheduler address
        raise DataError(f"--scheduler {scheduler}: {exc}") from None


def _table(columns: dict[str, Any], types: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()})


def run_backtest(
    *,
    data_dir: Path,
    models_dir: Path,
    out_dir: Path,
    versions: Sequence[str] = (),
    policies: Sequence[Path] = (),
    start: Any = None,
    end: Any = None,
    scheduler: str | None = None,
    config_path: Path | None = None,
    reasons: bool = True,
    progress: bool = False,
    log: Log = None,
) -> BacktestRun:
    """Decide [start, end) with every candidate; write decisions.parquet, summary, report."""
    from training.backtest_report import write_outputs

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    config = load_config(config_path)
    notes: list[str] = []
    candidates = load_candidates(models_dir, versions, policies, notes)
    tables = load_tables(data_dir)
    events = tables.events
    assert events is not None
    notes += tables.notes
    rows, lo, hi = select_period(events, _as_utc(start), _as_utc(end))
    labels_as_of = pd.Timestamp(events["timestamp"].iloc[-1])
    history = events.iloc[: rows[-1] + 1]  # later events cannot change earlier features
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _say(log, f"features: {len(history):,} events of history, {len(rows):,} to decide")
    X_all = compute_features(history, tables.accounts, scheduler, log)
    is_credit = (
        (history["funding_source"] == "credit_line").to_numpy(bool)[rows]
        if "funding_source" in history.columns
        else np.zeros(len(rows), dtype=bool)
    )
    XC = np.full((len(rows), len(fs.CREDIT_FEATURE_NAMES)), np.nan)
    if any(c.credit is not None for c in candidates) or is_credit.any():
        XC[is_credit] = credit_payment_features(history, tables.accounts, X_all, rows[is_credit])
    X = X_all[rows]
    del X_all
    timings["features"] = time.perf_counter() - clock

    clock = time.perf_counter()
    scored = history.iloc[rows].reset_index(drop=True)
    settings = ScoringSettings()
    threads = os.cpu_count() or 1
    chunk = int(config["backtest"]["chunk_rows"])
    n = len(rows)
    decisions = {c.name: np.zeros(n, np.int8) for c in candidates}
    probabilities = {c.name: np.zeros(n) for c in candidates}
    credit_pd = {c.name: np.full(n, np.nan) for c in candidates}
    credit_dec = {c.name: np.full(n, None, dtype=object) for c in candidates}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "decisions.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    writer: pq.ParquetWriter | None = None
    bar = tqdm(total=n * len(candidates), desc="decide", unit="ev", disable=not progress)
    try:
        for lo_row in range(0, n, chunk):
            part = slice(lo_row, min(lo_row + chunk, n))
            batch = request_events(scored.iloc[part])
            columns: dict[str, Any] = {"event_id": scored["event_id"].iloc[part].tolist()}
            types: dict[str, pa.DataType] = {"event_id": pa.string()}
            for c in candidates:
                cols = decide_chunk(
                    c, batch, X[part], XC[part], settings, reasons=reasons, threads=threads
                )
                decisions[c.name][part] = cols.pop("_decision_code")
                probabilities[c.name][part] = cols["fraud_probability"]
                pds = cols["probability_of_default"]
                credit_pd[c.name][part] = [np.nan if v is None else v for v in pds]
                credit_dec[c.name][part] = cols["credit_decision"]
                suffix = f"__{c.name}" if len(candidates) > 1 else ""
                columns.update({f"{k}{suffix}": cols[k] for k in PER_CANDIDATE})
                types.update({f"{k}{suffix}": t for k, t in PER_CANDIDATE.items()})
                bar.update(part.stop - part.start)
            table = _table(columns, types)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    tmp.replace(path)
    timings["decide"] = time.perf_counter() - clock

    keep = [
        c
        for c in ("event_id", "timestamp", "account_id", "instrument_id", "amount",
                  "funding_source", "is_fraud", "label_time", "fraud_scenario")
        if c in scored.columns
    ]  # fmt: skip
    run = BacktestRun(
        candidates=candidates,
        events=scored[keep],
        decisions=decisions,
        probabilities=probabilities,
        credit_pd=credit_pd,
        credit_decision=credit_dec,
        labels_as_of=labels_as_of,
        start=lo,
        end=hi,
        config=config,
        timings=timings,
        notes=notes,
    )
    clock = time.perf_counter()
    write_outputs(run, out_dir, credit=tables.credit, accounts=tables.accounts, history=history)
    timings["summary"] = time.perf_counter() - clock
    return run
