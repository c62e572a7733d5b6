"""The fixed score mapping and the cost-minimising threshold search (against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from risk_service.scores import decide, decide_many, fraud_band, fraud_score, fraud_scores
from training.costs import Costs, choose_thresholds, decision_costs, policy_cost

COSTS = Costs(
    fraud_loss_share=1.0,
    challenge_friction=0.3,
    challenge_stop_rate=0.85,
    review_cost=3.0,
    review_catch_rate=0.95,
    false_decline_margin=0.03,
    false_decline_fixed=5.0,
)


def test_score_mapping_is_the_documented_function() -> None:
    assert fraud_score(1e-4) == 0
    assert fraud_score(1e-3) == 25
    assert fraud_score(0.01) == 50
    assert fraud_score(0.1) == 75
    assert fraud_score(0.5) == 92
    assert fraud_score(1.0) == 99
    assert fraud_score(0.0) == 0
    p = np.random.default_rng(0).uniform(0, 1, 1000) ** 4
    assert list(fraud_scores(p)) == [fraud_score(x) for x in p]
    assert np.all(np.diff(fraud_scores(np.sort(p))) >= 0)
    assert [fraud_band(s) for s in (10, 50, 80, 95)] == ["low", "medium", "high", "very_high"]


def test_decisions_follow_thresholds() -> None:
    t = {"challenge": 0.1, "review": 0.3, "decline": 0.6}
    p = np.array([0.05, 0.1, 0.29, 0.3, 0.59, 0.6, 0.99])
    assert [decide(x, t) for x in p] == [
        "approve",
        "challenge",
        "challenge",
        "review",
        "review",
        "decline",
        "decline",
    ]
    assert list(decide_many(p, t)) == [0, 1, 1, 2, 2, 3, 3]


def test_decision_costs_price_each_outcome() -> None:
    matrix = decision_costs(np.array([1, 0]), np.array([100.0, 100.0]), COSTS)
    assert matrix[0].tolist() == pytest.approx([100.0, 15.0, 8.0, 0.0])
    assert matrix[1].tolist() == pytest.approx([0.0, 0.3, 3.0, 8.0])


def test_threshold_search_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.uniform(size=n) < 0.05).astype(int)
    p = np.round(np.clip(rng.beta(1, 30, n) + 0.3 * y * rng.uniform(size=n), 0, 1), 3)
    amount = rng.lognormal(4, 1, n).round(2)
    budgets = {
        "days": 10.0,
        "reviews_per_day": 1.5,
        "max_challenge_rate": 0.05,
        "max_decline_rate": 0.02,
    }
    choice = choose_thresholds(p, y, amount, COSTS, **budgets, grid=10_000)
    # brute force over every distinct threshold triple
    candidates = np.concatenate([np.unique(p), [np.inf]])
    best = np.inf
    for td, tr, tc in itertools.product(candidates, repeat=3):
        if not tc <= tr <= td:
            continue
        t = {"challenge": tc, "review": tr, "decline": td}
        d = decide_many(p, t)
        if (d == 3).sum() > budgets["max_decline_rate"] * n:
            continue
        if (d == 2).sum() > budgets["reviews_per_day"] * budgets["days"]:
            continue
        if (d == 1).sum() > budgets["max_challenge_rate"] * n:
            continue
        best = min(best, policy_cost(d, y, amount, COSTS))
    chosen = decide_many(p, choice.thresholds)
    assert policy_cost(chosen, y, amount, COSTS) == pytest.approx(best)
    assert choice.cost == pytest.approx(best)
    assert choice.cost < choice.cost_approve_all
