"""Evaluating fraud scores on a test period: the metrics users of a fraud model look for.

The same function scores the model and its baselines, so the report compares
like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from risk_service.scores import DECISIONS
from training import evaluate as ev
from training.costs import Costs, decision_costs

FPR_POINTS: tuple[float, ...] = (0.001, 0.005, 0.01)


def card_ids(events: pd.DataFrame) -> np.ndarray:
    """A "card" for Card Precision@k: instrument_id where present, else account_id."""
    account = events["account_id"].astype(str).to_numpy()
    if "instrument_id" not in events.columns:
        return account
    instrument = events["instrument_id"]
    return np.where(instrument.notna(), instrument.astype(str).to_numpy(), account)


def score_metrics(
    y: np.ndarray,
    score: np.ndarray,
    amount: np.ndarray,
    days: np.ndarray,
    cards: np.ndarray,
    *,
    k: int = 100,
) -> dict[str, Any]:
    """Ranking metrics of one score on one labelled period."""
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    out: dict[str, Any] = {
        "events": len(y),
        "frauds": int(y.sum()),
        "roc_auc": float(ev.roc_auc(y, score)),
        "average_precision": float(ev.average_precision(y, score)),
    }
    for fpr in FPR_POINTS:
        out[f"recall_at_fpr_{fpr:g}"] = float(ev.recall_at_fpr(y, score, fpr))
    # Amount-weighted detection at the 1% FPR operating point.
    negatives = np.sort(score[y == 0])
    threshold = negatives[int(np.floor(0.99 * (len(negatives) - 1)))] if len(negatives) else 0.5
    out["amount_weighted_recall_at_fpr_0.01"] = float(
        ev.amount_weighted_recall(y, score, amount, np.nextafter(threshold, np.inf))
    )
    cp_mean, _ = ev.card_precision_at_k(days, cards, y, score, k=k)
    out[f"card_precision_at_{k}"] = float(cp_mean)
    return out


def decision_metrics(
    decisions: np.ndarray, y: np.ndarray, amount: np.ndarray, costs: Costs, days: float
) -> dict[str, Any]:
    """Business view of a policy's decisions: rates, fraud caught, false declines and cost."""
    decisions = np.asarray(decisions, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    amount = np.asarray(amount, dtype=np.float64)
    n = max(len(y), 1)
    out: dict[str, Any] = (
        {f"{name}_rate": float(np.mean(decisions == i)) for i, name in enumerate(DECISIONS)}
        if len(y)
        else {}
    )
    stopped = decisions > 0
    fraud = y == 1
    out["fraud_caught"] = int(np.sum(stopped & fraud))
    out["fraud_caught_value"] = float(amount[stopped & fraud].sum())
    out["fraud_total"] = int(fraud.sum())
    out["fraud_total_value"] = float(amount[fraud].sum())
    declined = decisions == 3
    out["false_declines"] = int(np.sum(declined & ~fraud))
    out["decline_precision"] = float(np.sum(declined & fraud) / max(int(declined.sum()), 1))
    out["reviews_per_day"] = float(np.sum(decisions == 2) / max(days, 1e-9))
    matrix = decision_costs(y, amount, costs)
    out["expected_cost"] = float(matrix[np.arange(len(y)), decisions].sum())
    out["expected_cost_approve_all"] = float(matrix[:, 0].sum())
    out["expected_cost_per_event"] = out["expected_cost"] / n
    return out


def recall_by_scenario(
    scenario: pd.Series | None, y: np.ndarray, stopped: np.ndarray
) -> dict[str, dict[str, float]]:
    """Share of each scenario's fraud that the policy did not approve."""
    if scenario is None:
        return {}
    frame = pd.DataFrame({"scenario": scenario.fillna("").to_numpy(), "y": y, "stopped": stopped})
    frame = frame[(frame["y"] == 1) & (frame["scenario"] != "")]
    return {
        str(name): {"frauds": len(group), "recall": float(group["stopped"].mean())}
        for name, group in frame.groupby("scenario", sort=True)
    }


def cost_curve(
    p: np.ndarray, y: np.ndarray, amount: np.ndarray, costs: Costs, points: int = 40
) -> pd.DataFrame:
    """Expected cost when everything at or above a threshold is declined, across thresholds."""
    thresholds = np.unique(np.quantile(p, np.linspace(0.9, 1.0, points)))
    matrix = decision_costs(y, amount, costs)
    rows = []
    for t in thresholds:
        flagged = p >= t
        rows.append(
            {
                "threshold": float(t),
                "flag_rate": float(flagged.mean()),
                "cost": float(matrix[flagged, 3].sum() + matrix[~flagged, 0].sum()),
            }
        )
    return pd.DataFrame(rows)
