"""`risk train --from-log URL`: the fraud model from logged decisions and feedback labels.

The feature vectors are the ones the decision log holds: exactly what the model
saw when it decided, so point-in-time by construction. Outcomes follow the
conventions of the canonical tables (docs/data.md, training/datasets.py):

- a fraud label counts only if its ``label_time`` is at or before the cut-off
  (``--train-until``, default now); of several, the latest such label wins;
- a payment that went through (approved, challenged, reviewed) and has no fraud
  label by the end of the chargeback window (``datasets.DEFAULT_LABEL_DELAY``,
  45 days) is good, known at that moment (``normalise_events`` assumes it);
- a declined payment never happened: no chargeback can come, so it has an
  outcome only when someone labelled it (an analyst, the customer);
- events within the chargeback window before the cut-off are left out: only
  their frauds are known yet, and training on them alone would bias the model.

Every event left has a known label, so the usual time split applies with the
test period at the end of the mature history. Fitting, calibration, thresholds,
evaluation and bundles are the pieces ``risk train`` uses
(``fraud_pipeline.plan_split``, ``fraud.fit_fraud_model``,
``fraud_pipeline.thresholds_on_validation``, ``fraud_pipeline.evaluate_fraud``,
``train.write_bundle``, ``report.write_report``). The report says how biased the
set is (``selection_bias``): the model only learns from traffic the champion let
through or someone labelled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risk_service import features as fs
from risk_service.bundles import Registry, atomic_write_json
from training import fraud as fr
from training.config import load_config
from training.datasets import (
    DEFAULT_LABEL_DELAY,
    DataError,
    labels_known_by,
    normalise_events,
)
from training.fraud_pipeline import FraudRun, evaluate_fraud, plan_split, thresholds_on_validation
from training.log_outcomes import outcomes_as_of, selection_bias
from training.log_source import LogContents, read_log

MIN_LABELLED = 1000
MIN_FRAUDS = 30
Log = Callable[[str], None] | None


def _need_more(what: str) -> DataError:
    return DataError(
        f"{what}; training from the decision log needs at least {MIN_LABELLED:,} payment "
        f"decisions with a known outcome, {MIN_FRAUDS} of them fraud, spread over about "
        "10 weeks before the chargeback window (train, label-delay gap, validation, test): "
        "wait for more history and feedback, or train on tables with --data"
    )


def known_outcomes(
    contents: LogContents, cutoff: pd.Timestamp, notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, dict[str, Any]]:
    """(events, X, labels as known at the cut-off, selection bias): decisions with an outcome."""
    frame, X, bias = outcomes_as_of(contents, cutoff, notes)
    frame["_row"] = np.arange(len(frame))
    assumed = int((frame["is_fraud"].eq(0) & frame["label_time"].isna()).sum())
    if assumed:
        notes.append(
            f"{assumed} payments that went through had no fraud label: good, known at the end "
            f"of the chargeback window (timestamp + {DEFAULT_LABEL_DELAY.days} days)"
        )
    # normalise_events' notes are about tables brought to `risk train --data`, not logs.
    events = normalise_events(frame, label_delay=DEFAULT_LABEL_DELAY, notes=[])
    X = X[events.pop("_row").to_numpy()]
    # label_time <= cut-off counts: labels_known_by is strict, so one millisecond later.
    known = labels_known_by(events, cutoff + pd.Timedelta(milliseconds=1), "is_fraud")
    keep = known.notna().to_numpy()
    return (
        events[keep].reset_index(drop=True),
        pd.DataFrame(X[keep], columns=list(fs.FEATURE_NAMES)),
        known[keep].reset_index(drop=True),
        bias,
    )


def build_training_set(
    contents: LogContents, cutoff: pd.Timestamp, notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, dict[str, Any]]:
    """``known_outcomes``, refused with the minimum named when there is too little."""
    events, X, known, bias = known_outcomes(contents, cutoff, notes)
    frauds = int(known.sum())
    if len(events) < MIN_LABELLED or frauds < MIN_FRAUDS:
        raise _need_more(
            f"the log {contents.source} has {len(events):,} usable payment decisions with a "
            f"known outcome ({frauds} fraud) as of {cutoff.isoformat()}"
        )
    return events, X, known, bias


def fit_on_logged_features(
    events: pd.DataFrame,
    X: pd.DataFrame,
    known: pd.Series,
    *,
    config: dict[str, Any],
    seed: int,
    notes: list[str],
) -> FraudRun:
    """The fraud pipeline's split, fit, calibration, thresholds and evaluation on a given X.

    Mirrors ``fraud_pipeline.train_fraud`` after its feature step (every label here is
    already as known at the cut-off, so the test period is the end of the history).
    """
    split, _, gap = plan_split(events, known, config, None)
    ts = events["timestamp"]
    train_mask = ((ts >= split.train_start) & (ts < split.train_end)).to_numpy()
    valid_mask = ((ts >= split.valid_start) & (ts < split.valid_end)).to_numpy()
    test_mask = ((ts >= split.test_start) & (ts < split.test_end)).to_numpy()
    y = known.to_numpy(np.int64)
    y_train, y_valid, y_test = y[train_mask], y[valid_mask], y[test_mask]
    for name, part in (("train", y_train), ("validation", y_valid), ("test", y_test)):
        if part.sum() == 0 or part.sum() == len(part):
            raise _need_more(
                f"the {name} period has {int(part.sum())} frauds among {len(part):,} decisions"
            )
    model = fr.fit_fraud_model(
        X[train_mask],
        y_train,
        X[valid_mask],
        y_valid,
        feature_names=fs.FEATURE_NAMES,
        categorical=fs.CATEGORICAL_FEATURES,
        seed=seed,
    )
    choice = thresholds_on_validation(model, X, events, valid_mask, y_valid, split, config)
    return evaluate_fraud(
        model,
        X,
        events,
        split=split,
        masks=(train_mask, valid_mask, test_mask),
        y_train=y_train,
        y_valid=y_valid,
        y_test=y_test,
        choice=choice,
        config=config,
        seed=seed,
        notes=notes,
        gap=gap,
    )


def _fingerprint(source: str, events: pd.DataFrame, X: pd.DataFrame, known: pd.Series) -> str:
    """SHA-256 of exactly what was fitted: event ids, labels, label times and features."""
    digest = hashlib.sha256(source.encode())
    digest.update(pd.util.hash_pandas_object(events["event_id"], index=False).to_numpy().tobytes())
    digest.update(known.to_numpy(np.float64).tobytes())
    digest.update(events["label_time"].astype("int64").to_numpy().tobytes())
    digest.update(np.ascontiguousarray(X.to_numpy(np.float64)).tobytes())
    return digest.hexdigest()


def run_training_from_log(
    *,
    url: str,
    models_dir: Path,
    reports_dir: Path,
    seed: int = 0,
    train_until: datetime | None = None,
    config_path: Path | None = None,
    promote: bool = False,
    log: Log = None,
) -> list[str]:
    """Read the log, build the set as of the cut-off, fit, write a bundle and a report."""
    from training.report import write_report
    from training.train import write_bundle

    config = load_config(config_path)
    cutoff = pd.Timestamp(train_until if train_until is not None else pd.Timestamp.now("UTC"))
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    if log is not None:
        log(f"fraud: reading decisions and labels from {url.split('@')[-1]}")
    contents = read_log(url)
    notes = list(contents.notes)
    events, X, known, bias = build_training_set(contents, cutoff, notes)
    if log is not None:
        log(f"fraud: fitting on {len(events):,} logged decisions ({int(known.sum())} fraud)")
    run = fit_on_logged_features(events, X, known, config=config, seed=seed, notes=[])
    stamp = pd.Timestamp(events["timestamp"].max()).strftime("%Y%m%d")
    run.version = write_bundle(
        models_dir,
        "fraud",
        stamp,
        run.model.save,
        {
            "seed": seed,
            "training_data_fingerprint": _fingerprint(contents.source, events, X, known),
            "train_until": cutoff.isoformat(),
            "training_source": {"decision_log": contents.source, "selection_bias": bias},
            "feature_set_version": fs.FEATURE_SET_VERSION,
            "feature_names": list(fs.FEATURE_NAMES),
            "categorical_features": list(fs.CATEGORICAL_FEATURES),
            "thresholds": run.threshold_choice.thresholds,
            "time_ranges": run.split.as_dict(),
            "metrics": run.metrics_for_manifest(),
            "notes": notes + run.notes,
        },
    )
    summary = [f"fraud model {run.version} (from the decision log): {run.headline()}"]
    registry = Registry(models_dir)
    if promote or registry.champion("fraud") is None:
        registry.promote("fraud", run.version)
        summary.append(f"fraud champion is now {run.version}")
    report_dir = Path(reports_dir) / run.version
    write_report(
        report_dir, fraud=run, credit=None, notes=bias["statements"] + notes, config=config
    )
    atomic_write_json(report_dir / "selection_bias.json", bias)
    summary.append(f"report: {report_dir / 'index.html'}")
    summary.append(bias["statements"][0])
    return summary


__all__ = [
    "MIN_FRAUDS",
    "MIN_LABELLED",
    "build_training_set",
    "fit_on_logged_features",
    "known_outcomes",
    "run_training_from_log",
    "selection_bias",
]
