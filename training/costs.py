"""Pricing decisions in money, and choosing policy thresholds that minimise that price.

Shared by training (thresholds chosen on the validation period) and by reports
and backtests (the expected cost of a policy), so both price a decision alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from risk_service.scores import DECISIONS


@dataclass(frozen=True)
class Costs:
    fraud_loss_share: float
    challenge_friction: float
    challenge_stop_rate: float
    review_cost: float
    review_catch_rate: float
    false_decline_margin: float
    false_decline_fixed: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Costs:
        return cls(**{k: float(v) for k, v in config["costs"].items()})


def decision_costs(y: np.ndarray, amount: np.ndarray, costs: Costs) -> np.ndarray:
    """An (n, 4) matrix: the cost of approve, challenge, review and decline for each event."""
    y = np.asarray(y, dtype=np.float64)
    amount = np.asarray(amount, dtype=np.float64)
    loss = y * amount * costs.fraud_loss_share
    good = 1.0 - y
    return np.column_stack(
        [
            loss,
            loss * (1.0 - costs.challenge_stop_rate) + good * costs.challenge_friction,
            costs.review_cost + loss * (1.0 - costs.review_catch_rate),
            good * (costs.false_decline_margin * amount + costs.false_decline_fixed),
        ]
    )


def policy_cost(decisions: np.ndarray, y: np.ndarray, amount: np.ndarray, costs: Costs) -> float:
    """Total expected cost of decisions given as indexes into DECISIONS."""
    matrix = decision_costs(y, amount, costs)
    return float(matrix[np.arange(len(decisions)), np.asarray(decisions, dtype=np.int64)].sum())


@dataclass(frozen=True)
class ThresholdChoice:
    thresholds: dict[str, float]
    cost: float
    cost_approve_all: float
    rates: dict[str, float]
    reviews_per_day: float


def choose_thresholds(
    p: np.ndarray,
    y: np.ndarray,
    amount: np.ndarray,
    costs: Costs,
    *,
    days: float,
    reviews_per_day: float,
    max_challenge_rate: float,
    max_decline_rate: float,
    grid: int = 120,
) -> ThresholdChoice:
    """Cheapest thresholds (challenge <= review <= decline) within the budgets.

    Candidate cut points are where the calibrated probability changes value, so
    a threshold never splits a tie. Every combination of three cut points on a
    grid is priced at once from cumulative sums.
    """
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    if n == 0:
        raise ValueError("cannot choose thresholds on an empty validation set")
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    matrix = decision_costs(np.asarray(y)[order], np.asarray(amount)[order], costs)
    cum = np.vstack([np.zeros((1, 4)), np.cumsum(matrix, axis=0)])
    # boundaries: positions i where ps[i-1] > ps[i] (the first i events get flagged)
    boundaries = np.concatenate([[0], np.nonzero(ps[:-1] > ps[1:])[0] + 1, [n]])
    limit = max(max_challenge_rate + max_decline_rate, reviews_per_day * days / n) * n * 1.5
    boundaries = boundaries[boundaries <= max(limit, 1)]
    if len(boundaries) > grid:
        idx = np.unique(np.round(np.geomspace(1, len(boundaries), grid)).astype(int) - 1)
        boundaries = np.unique(np.concatenate([[0], boundaries[idx]]))
    b = boundaries
    i_d = b[:, None, None]
    i_r = b[None, :, None]
    i_c = b[None, None, :]
    total = (
        cum[i_d, 3]
        + (cum[i_r, 2] - cum[i_d, 2])
        + (cum[i_c, 1] - cum[i_r, 1])
        + (cum[n, 0] - cum[i_c, 0])
    )
    feasible = (
        (i_d <= i_r)
        & (i_r <= i_c)
        & (i_d <= max_decline_rate * n)
        & ((i_r - i_d) <= reviews_per_day * days)
        & ((i_c - i_r) <= max_challenge_rate * n)
    )
    total = np.where(feasible, total, np.inf)
    flat = int(np.argmin(total))
    a, r, c = np.unravel_index(flat, total.shape)
    cuts = {"decline": int(b[a]), "review": int(b[r]), "challenge": int(b[c])}

    def threshold_at(count: int) -> float:
        if count <= 0:
            return float(np.nextafter(1.0, 2.0))  # nothing flagged
        return float(ps[count - 1])

    thresholds = {name: threshold_at(count) for name, count in cuts.items()}
    rates = {
        "decline": cuts["decline"] / n,
        "review": (cuts["review"] - cuts["decline"]) / n,
        "challenge": (cuts["challenge"] - cuts["review"]) / n,
    }
    rates["approve"] = 1.0 - sum(rates.values())
    return ThresholdChoice(
        thresholds=thresholds,
        cost=float(total[a, r, c]),
        cost_approve_all=float(cum[n, 0]),
        rates=rates,
        reviews_per_day=(cuts["review"] - cuts["decline"]) / days,
    )


__all__ = ["DECISIONS", "Costs", "ThresholdChoice", "choose_thresholds", "decision_costs"]
