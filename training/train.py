"""`risk train`: from canonical tables to verified, versioned model bundles and a report.

The order of work: read and check the tables, compute point-in-time features,
split by time (train, gap, validation; test after), fit and calibrate, choose
policy thresholds by cost on validation, evaluate on the test period against
baselines, write bundles (files, then manifest, then rename into place), and
register the champion.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from risk_service import audit, registry_admin
from risk_service import features as fs
from risk_service.bundles import (
    Registry,
    atomic_write_json,
    content_version,
    sha256_file,
    write_manifest,
)
from training.config import load_config
from training.credit_pipeline import CreditRun, train_credit_from_events, train_credit_from_table
from training.datasets import DataError, Tables, find_table, load_tables
from training.fraud_pipeline import FraudRun, train_fraud

Log = Callable[[str], None] | None


def _say(log: Log, message: str) -> None:
    if log is not None:
        log(message)


def data_fingerprint(paths: Iterable[Path], extra: str = "") -> str:
    """SHA-256 over the input files' hashes: identifies exactly what a model was trained on."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _input_files(data_dir: Path | None, credit_data: Path | None) -> list[Path]:
    files: list[Path] = []
    if data_dir is not None:
        for name in ("events", "accounts", "credit"):
            found = find_table(data_dir, name)
            if found is not None:
                files.append(found)
    if credit_data is not None:
        files.append(Path(credit_data))
    return files


def write_bundle(
    models_dir: Path,
    kind: str,
    stamp: str,
    save: Callable[[Path], list[str]],
    fields: dict[str, Any],
) -> str:
    """Write a bundle into a temp dir, hash it, and move it into models/<kind>/<version>."""
    root = Path(models_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
    try:
        files = save(staging)
        version = content_version(kind, staging, files, stamp)
        write_manifest(staging, files, {"kind": kind, "version": version, **fields})
        final = root / version
        if final.exists():
            shutil.rmtree(final)  # same files by construction: the version is their hash
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def run_training(
    *,
    data_dir: Path | None,
    models_dir: Path,
    reports_dir: Path,
    seed: int = 0,
    train_until: datetime | None = None,
    credit_data: Path | None = None,
    target: str | None = None,
    config_path: Path | None = None,
    promote: bool = False,
    progress: bool = False,
    log: Log = None,
) -> list[str]:
    """Train what the inputs allow; return summary lines. Missing inputs are noted, not fatal."""
    from training.report import write_report

    config = load_config(config_path)
    as_of = pd.Timestamp(train_until) if train_until is not None else None
    tables = (
        load_tables(data_dir, need_events=credit_data is None)
        if data_dir is not None
        else Tables(events=None, notes=["no --data: only the credit model is trained"])
    )
    fingerprint = data_fingerprint(
        _input_files(data_dir, credit_data), extra=f"as_of={as_of}|seed={seed}"
    )
    end = as_of if as_of is not None else _data_end(tables)
    stamp = end.strftime("%Y%m%d") if end is not None else "undated"
    registry = Registry(models_dir)
    summary: list[str] = []
    common = {
        "seed": seed,
        "training_data_fingerprint": fingerprint,
        "train_until": as_of.isoformat() if as_of is not None else None,
        "notes": tables.notes,
    }

    fraud: FraudRun | None = None
    if tables.events is not None and "is_fraud" in tables.events.columns:
        _say(log, "fraud: computing features and fitting the model")
        fraud = train_fraud(tables, config=config, seed=seed, as_of=as_of, progress=progress)
        fraud.version = write_bundle(
            models_dir,
            "fraud",
            stamp,
            fraud.model.save,
            {
                **common,
                "feature_set_version": fs.FEATURE_SET_VERSION,
                "feature_names": list(fs.FEATURE_NAMES),
                "categorical_features": list(fs.CATEGORICAL_FEATURES),
                "thresholds": fraud.threshold_choice.thresholds,
                "time_ranges": fraud.split.as_dict(),
                "metrics": fraud.metrics_for_manifest(),
                "notes": tables.notes + fraud.notes,
            },
        )
        summary.append(f"fraud model {fraud.version}: {fraud.headline()}")

    credit: CreditRun | None = None
    if credit_data is not None:
        assert target is not None
        _say(log, f"credit: training on {credit_data} (target {target})")
        credit = train_credit_from_table(credit_data, target, config=config, seed=seed)
    elif tables.events is not None and tables.credit is not None:
        _say(log, "credit: computing behaviour features at each application")
        try:
            credit = train_credit_from_events(tables, config=config, seed=seed, as_of=as_of)
        except DataError as exc:  # training does what it can; the report says what was not done
            tables.notes.append(f"credit model not trained: {exc}")
            summary.append(f"credit model not trained: {exc}")
    if credit is not None:
        credit.version = write_bundle(
            models_dir,
            "credit",
            stamp,
            credit.models.save,
            {
                **common,
                "feature_set_version": credit.feature_set_version,
                "feature_names": credit.feature_names,
                "feature_source": credit.feature_source,
                "time_ranges": credit.ranges,
                "metrics": credit.metrics_for_manifest(),
                "notes": tables.notes + credit.notes,
            },
        )
        summary.append(f"credit model {credit.version}: {credit.headline()}")

    if fraud is None and credit is None:
        raise DataError(
            "nothing to train: events need is_fraud labels, or give a credit table / --credit-data"
        )
    for run in (fraud, credit):
        if run is None:
            continue
        kind = "fraud" if run is fraud else "credit"
        if promote or registry.champion(kind) is None:
            registry_admin.promote(registry.models_dir, kind, run.version, audit.cli_actor())
            summary.append(f"{kind} champion is now {run.version}")

    report_version = fraud.version if fraud is not None else credit.version  # type: ignore[union-attr]
    report_dir = Path(reports_dir) / report_version
    write_report(report_dir, fraud=fraud, credit=credit, notes=tables.notes, config=config)
    summary.append(f"report: {report_dir / 'index.html'}")
    return summary


def _data_end(tables: Tables) -> pd.Timestamp | None:
    """The last instant in the data, which names model versions; None for undated tables."""
    for frame in (tables.events, tables.credit):
        if frame is not None and len(frame):
            return pd.Timestamp(frame["timestamp"].max())
    return None


def rebuild_report(
    *,
    models_dir: Path,
    data_dir: Path,
    reports_dir: Path,
    config_path: Path | None = None,
    progress: bool = False,
) -> list[str]:
    """Re-evaluate the champion bundles on `data_dir` and rewrite their report."""
    from training.reevaluate import reevaluate_champions
    from training.report import write_report

    config = load_config(config_path)
    tables = load_tables(data_dir, need_events=False)
    fraud, credit = reevaluate_champions(models_dir, tables, config=config, progress=progress)
    if fraud is None and credit is None:
        raise DataError(f"no champion model in {models_dir} to report on")
    version = fraud.version if fraud is not None else credit.version  # type: ignore[union-attr]
    report_dir = Path(reports_dir) / version
    write_report(report_dir, fraud=fraud, credit=credit, notes=tables.notes, config=config)
    atomic_write_json(report_dir / "rebuilt_from.json", {"data": str(data_dir)})
    return [f"report: {report_dir / 'index.html'}"]
