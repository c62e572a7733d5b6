"""Credit in backtests: scoring credit applications, and the `--credit-data` table mode.

Applications of the event world are scored as the service scores a
`credit_application` request (features before the events of the same instant,
then PD thresholds). An application table (`--credit-data`) is scored by a
bundle trained on such a table, whose encoder and columns travel inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from risk_service.bundles import Registry, atomic_write_json, jsonable, verify_bundle
from risk_service.credit_model import CreditModel, recommended_limit, score_from_pd
from risk_service.features import CREDIT_FEATURE_NAMES, compute_offline_credit_features
from risk_service.scoring import ScoringSettings, credit_decision
from training.credit import CreditModels
from training.credit_pipeline import read_application_table
from training.datasets import DataError


def credit_decisions(pd_: np.ndarray, settings: ScoringSettings) -> np.ndarray:
    """The service's credit decision for each PD."""
    return np.array([credit_decision(float(p), settings) for p in pd_], dtype=object)


def score_applications(
    model: CreditModel,
    credit: pd.DataFrame,
    accounts: pd.DataFrame | None,
    history: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> pd.DataFrame | None:
    """PD, band, decision and recommended limit of the applications in [start, end)."""
    apps = credit[(credit["timestamp"] >= start) & (credit["timestamp"] < end)]
    if len(apps) == 0:
        return None
    apps = apps.sort_values("timestamp", kind="stable").reset_index(drop=True)
    # Every credit feature is an account feature: the applicants' own events suffice.
    mine = history["account_id"].isin(pd.unique(apps["account_id"])).to_numpy()
    X = compute_offline_credit_features(history[mine], accounts, apps).to_numpy(np.float64)
    pd_ = model.predict_pd(X)
    income = X[:, CREDIT_FEATURE_NAMES.index("monthly_income")]
    out = pd.DataFrame(
        {
            "application_id": apps["application_id"],
            "probability_of_default": pd_,
            "band": [model.band(score_from_pd(v)) for v in pd_],
            "decision": credit_decisions(pd_, ScoringSettings()),
            "recommended_limit": [
                recommended_limit(float(p), float(i), float(r))
                for p, i, r in zip(pd_, income, apps["requested_limit"], strict=True)
            ],
        }
    )
    for column in ("defaulted", "label_time"):
        out[column] = apps[column].to_numpy() if column in apps.columns else np.nan
    return out


def load_table_model(models_dir: Path, version: str | None) -> tuple[str, CreditModels]:
    """A credit bundle trained on an application table: verified, then loaded."""
    registry = Registry(models_dir)
    version = version or registry.champion("credit")
    if version is None:
        raise DataError(f"no credit champion in {models_dir}: pass --version credit=V")
    if version not in registry.versions("credit"):
        known = ", ".join(registry.versions("credit")) or "none"
        raise DataError(
            f"--version credit={version}: unknown credit model version in {models_dir} "
            f"(known: {known})"
        )
    bundle = verify_bundle(registry.bundle_dir("credit", version), expected_kind="credit")
    if bundle.manifest.get("feature_source", "events") != "table":
        raise DataError(
            f"credit model {version} computes its features from events; --credit-data needs a "
            "model trained on an application table (risk train --credit-data FILE --target COL)"
        )
    return version, CreditModels.load(bundle.directory)


def run_credit_table(
    *, credit_data: Path, models_dir: Path, out_dir: Path, version: str | None
) -> dict[str, Any]:
    """credit_decisions.parquet in the input's row order, and a summary.json."""
    version, models = load_table_model(models_dir, version)
    try:
        table = read_application_table(credit_data)
    except ValueError as exc:
        raise DataError(f"--credit-data {credit_data}: {exc}") from None
    try:
        pd_ = models.predict_pd(table)
    except ValueError as exc:
        raise DataError(f"--credit-data {credit_data}: {exc}") from None
    pd_ = np.asarray(pd_, dtype=np.float64)
    score = np.asarray(models.score(pd_), dtype=np.float64)
    out = pd.DataFrame(index=range(len(table)))
    if "application_id" in table.columns:
        out["application_id"] = table["application_id"].astype(str).to_numpy()
    out["probability_of_default"] = pd_
    out["score"] = score
    out["band"] = models.band(score).astype(str)
    out["decision"] = credit_decisions(pd_, ScoringSettings()).astype(str)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "credit_decisions.parquet.tmp"
    out.to_parquet(tmp, index=False)
    tmp.replace(out_dir / "credit_decisions.parquet")
    by_band = out.groupby("band", sort=True).agg(
        applications=("decision", "size"),
        approval_rate=("decision", lambda d: float((d == "approve").mean())),
        mean_pd=("probability_of_default", "mean"),
    )
    summary = {
        "credit_data": str(credit_data),
        "credit_model": version,
        "applications": len(out),
        "decision_rates": out["decision"].value_counts(normalize=True).to_dict(),
        "by_band": by_band.reset_index().to_dict(orient="records"),
    }
    atomic_write_json(out_dir / "summary.json", jsonable(summary))
    return summary
