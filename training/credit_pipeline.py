"""The credit half of `risk train`: from the simulator's credit table with behaviour features,
or from any application table a user brings (`--credit-data FILE --target COLUMN`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risk_service import features as fs
from training.credit import (
    CreditModels,
    cross_validate_credit,
    evaluate_credit,
    group_rates,
    train_credit_models,
)
from training.datasets import DataError, Tables
from training.tabular import TabularEncoder, load_application_table, load_german

IDENTIFIER_NAMES = frozenset({"id", "application_id", "account_id", "customer_id"})


@dataclass
class CreditRun:
    models: CreditModels
    feature_names: list[str]
    feature_set_version: str
    feature_source: str  # "events" (online-scorable) or "table" (batch only)
    ranges: dict[str, Any]
    metrics: dict[str, Any]
    groups: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    version: str = ""

    def metrics_for_manifest(self) -> dict[str, Any]:
        return {"test": self.metrics, "groups": self.groups}

    def headline(self) -> str:
        parts = []
        for name in ("champion", "challenger"):
            m = self.metrics.get(name, {})
            if "roc_auc" in m:
                parts.append(f"{name} ROC-AUC {m['roc_auc']:.3f}")
        cv = self.metrics.get("cross_validation")
        if cv:
            parts.append(
                "5-fold CV ROC-AUC "
                + ", ".join(f"{k} {v:.3f}" for k, v in cv.items() if k.endswith("auc_mean"))
            )
        return "; ".join(parts)


def _time_split(order: np.ndarray, fractions: tuple[float, float] = (0.6, 0.8)) -> list[np.ndarray]:
    n = len(order)
    a, b = int(n * fractions[0]), int(n * fractions[1])
    return [order[:a], order[a:b], order[b:]]


def _fit_and_evaluate(
    X: pd.DataFrame,
    y: np.ndarray,
    parts: list[np.ndarray],
    *,
    seed: int,
    categorical: list[str] | None,
    encoder: TabularEncoder | None = None,
) -> tuple[CreditModels, dict[str, Any]]:
    tr, va, te = parts
    for name, idx in (("train", tr), ("validation", va), ("test", te)):
        if len(np.unique(y[idx])) < 2:
            raise DataError(f"credit {name} split has only one outcome; need more applications")
    models = train_credit_models(
        X.iloc[tr],
        y[tr],
        X.iloc[va],
        y[va],
        X.iloc[te],
        y[te],
        seed=seed,
        categorical=categorical,
        encoder=encoder,
    )
    metrics = evaluate_credit(models, X.iloc[te], y[te], X_ref=X.iloc[tr])
    return models, metrics


def train_credit_from_events(
    tables: Tables, *, config: dict[str, Any], seed: int, as_of: pd.Timestamp | None
) -> CreditRun:
    """The simulator's credit table, with behaviour features from events before each application."""
    assert tables.events is not None and tables.credit is not None
    notes: list[str] = []
    credit = tables.credit
    if as_of is not None:
        usable = (credit["timestamp"] < as_of) & (credit["label_time"] < as_of)
        notes.append(
            f"{int((~usable).sum())} applications without an outcome known by {as_of} not used"
        )
        credit = credit[usable]
    credit = credit.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if len(credit) < 50:
        raise DataError(f"only {len(credit)} credit applications with known outcome; need 50+")
    X = fs.compute_offline_credit_features(tables.events, tables.accounts, credit)
    y = credit["defaulted"].to_numpy(np.int64)
    parts = _time_split(np.arange(len(credit)))
    models, metrics = _fit_and_evaluate(X, y, parts, seed=seed, categorical=[])
    ts = credit["timestamp"]
    ranges = {
        name: [ts.iloc[idx[0]].isoformat(), ts.iloc[idx[-1]].isoformat()]
        for name, idx in zip(("train", "valid", "test"), parts, strict=True)
    }
    groups = _protected_groups(credit, tables.accounts, models, X, parts[2], config)
    return CreditRun(
        models=models,
        feature_names=list(fs.CREDIT_FEATURE_NAMES),
        feature_set_version=fs.FEATURE_SET_VERSION,
        feature_source="events",
        ranges=ranges,
        metrics=metrics,
        groups=groups,
        notes=notes,
    )


def read_application_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--credit-data {path}: no such file")
    if path.suffix == ".data":  # the UCI German credit layout
        return load_german(path)
    return load_application_table(path)


def train_credit_from_table(
    path: Path, target: str, *, config: dict[str, Any], seed: int
) -> CreditRun:
    """Any application table: numeric and categorical columns, protected attributes excluded."""
    table = read_application_table(path)
    if target not in table.columns:
        raise DataError(
            f"--target {target!r} is not a column of {path}; columns: {list(table.columns)[:12]}"
        )
    notes: list[str] = []
    y_raw = pd.to_numeric(table[target], errors="coerce")
    if y_raw.isna().any() or not set(np.unique(y_raw)).issubset({0, 1}):
        raise DataError(f"--target {target!r} must hold 0/1 outcomes (1 = default)")
    y = y_raw.to_numpy(np.int64)
    features = table.drop(columns=[target])
    identifiers = [c for c in features.columns if c.lower() in IDENTIFIER_NAMES]
    if identifiers:
        notes.append(f"identifier column(s) not used as features: {identifiers}")
    has_time = "timestamp" in features.columns
    order = (
        np.argsort(pd.to_datetime(features["timestamp"], utc=True).to_numpy(), kind="stable")
        if has_time
        else np.random.default_rng(seed).permutation(len(features))
    )
    features = features.drop(columns=identifiers + (["timestamp"] if has_time else []))
    protected = tuple(str(c) for c in config["protected"]["columns"])
    parts = _time_split(order)
    models, metrics = _fit_and_evaluate(
        features, y, parts, seed=seed, categorical=None, encoder=TabularEncoder(protected=protected)
    )
    encoder = models.encoder
    assert encoder is not None
    if encoder.dropped_:
        notes.append(f"protected attribute(s) excluded from the model: {encoder.dropped_}")
    if not has_time:
        notes.append("no timestamp column: split at random (60/20/20), plus 5-fold CV")
        metrics["cross_validation"] = cross_validate_credit(features, y, folds=5, seed=seed)
    groups: dict[str, Any] = {}
    test = parts[2]
    approved = models.predict_pd(features.iloc[test]) <= float(config["credit"]["approve_max_pd"])
    for column in encoder.dropped_:
        groups[column] = group_rates(
            pd.DataFrame({column: table[column].iloc[test].to_numpy()}),
            column,
            approved,
            y[test],
        )
    X = encoder.transform(features)
    digest = hashlib.sha256(",".join(map(str, X.columns)).encode()).hexdigest()[:10]
    return CreditRun(
        models=models,
        feature_names=list(map(str, X.columns)),
        feature_set_version=f"table-{digest}",
        feature_source="table",
        ranges={"rows": len(table), "split": "time" if has_time else "random"},
        metrics=metrics,
        groups=groups,
        notes=notes,
    )


def _protected_groups(
    credit: pd.DataFrame,
    accounts: pd.DataFrame | None,
    models: CreditModels,
    X: pd.DataFrame,
    test: np.ndarray,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Approval and default rates by protected group, where the accounts table has such columns."""
    if accounts is None:
        return {}
    protected = [c for c in config["protected"]["columns"] if c in accounts.columns]
    if not protected:
        return {}
    joined = credit.iloc[test][["account_id"]].merge(accounts, on="account_id", how="left")
    approved = models.predict_pd(X.iloc[test]) <= float(config["credit"]["approve_max_pd"])
    y = credit["defaulted"].to_numpy(np.int64)[test]
    return {c: group_rates(joined, c, approved, y) for c in protected}
