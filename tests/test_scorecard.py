"""training.scorecard: PDO scaling, binning, IV selection, points, reasons, JSON round trip."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from training import evaluate as ev
from training.scorecard import ScoreScale, WoEScorecard


def synthetic(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Debt ratio raises the default rate monotonically, region matters, noise does not."""
    rng = np.random.default_rng(seed)
    debt = rng.uniform(0, 1, n)
    region = rng.choice(["north", "south", "east", "tiny"], size=n, p=[0.45, 0.35, 0.18, 0.02])
    noise = rng.normal(size=n)
    income = rng.lognormal(8, 0.5, n)
    income[rng.random(n) < 0.1] = np.nan
    logit = -2.5 + 3.0 * debt + np.where(region == "south", 0.7, 0.0) - 0.4 * np.isnan(income)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = pd.DataFrame({"debt_ratio": debt, "region": region, "noise": noise, "income": income})
    return X, y


@pytest.fixture(scope="module")
def fitted() -> tuple[WoEScorecard, pd.DataFrame, np.ndarray]:
    X, y = synthetic()
    return WoEScorecard().fit(X, y), X, y


def test_scale_follows_pdo() -> None:
    scale = ScoreScale(pdo=20, base_score=600, base_odds=50)
    assert scale.factor == pytest.approx(20 / math.log(2))
    # 600 points at 50:1 good:bad odds
    assert scale.score_from_pd(1 / 51) == pytest.approx(600.0)
    # doubling the odds of good adds 20 points, at any level
    for odds in (1.0, 5.0, 50.0, 300.0):
        p, p2 = 1 / (1 + odds), 1 / (1 + 2 * odds)
        assert scale.score_from_pd(p2) - scale.score_from_pd(p) == pytest.approx(20.0)
    pds = np.array([0.01, 0.2, 0.7])
    assert np.allclose(scale.pd_from_score(scale.score_from_pd(pds)), pds)


def test_points_add_up_to_pdo_score(fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray]) -> None:
    card, X, _ = fitted
    p_bad = card.predict_proba(X)[:, 1]
    assert np.allclose(card.score(X), card.scale.score_from_pd(p_bad, clip=0.0))
    table = card.points_table()
    row = X.iloc[[5]]
    total = 0.0
    for feature in card.features_:
        spec = card.bins_[feature]
        idx = int(card._bin_index(spec, row[feature])[0])
        label = spec["labels"][idx]
        total += table.loc[(table.feature == feature) & (table.bin == label), "points"].item()
    assert total == pytest.approx(card.score(row)[0])


def test_monotone_woe_and_iv(fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray]) -> None:
    card, X, y = fitted
    debt = card.bins_["debt_ratio"]
    woe = np.asarray(debt["woe"])
    assert len(woe) >= 3
    assert np.all(np.diff(woe) < 0)  # more debt → fewer goods per bad
    # IV of a logit slope of 3 over [0, 1] is medium-to-strong; noise is useless
    assert 0.2 < card.iv_["debt_ratio"] < 0.8
    assert card.iv_["noise"] < 0.02
    assert "noise" not in card.features_
    assert {"debt_ratio", "region"} <= set(card.features_)
    # our binned IV agrees in magnitude with a plain quantile-binned IV
    assert card.iv_["debt_ratio"] == pytest.approx(
        ev.information_value(X["debt_ratio"], y, bins=6), rel=0.3
    )


def test_missing_rare_and_unseen_levels(
    fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray],
) -> None:
    card, X, _ = fitted
    income = card.bins_["income"]
    assert income["has_missing"] and income["labels"][-1] == "missing"
    region = card.bins_["region"]
    assert "tiny" not in region["levels"] and region["has_other"]
    other = region["labels"].index("__other__")
    unseen = pd.DataFrame({**{c: [X[c].iloc[0]] for c in X.columns}, "region": ["mars"]})
    assert int(card._bin_index(region, unseen["region"])[0]) == other
    assert np.isfinite(card.score(unseen)).all()


def test_reasons_point_at_the_costly_features(
    fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray],
) -> None:
    card, X, _ = fitted
    worst = X.iloc[[0]].copy()
    worst["debt_ratio"] = 0.99
    worst["region"] = "south"
    reasons = card.reasons(worst, top=4)
    assert reasons[0]["feature"] == "debt_ratio"
    assert {r["feature"] for r in reasons} >= {"debt_ratio", "region"}
    lost = [r["points_lost"] for r in reasons]
    assert lost == sorted(lost, reverse=True)
    best = worst.copy()
    best["debt_ratio"] = 0.01
    best["region"] = "north"
    assert all(r["feature"] != "debt_ratio" for r in card.reasons(best))


def test_json_round_trip_is_exact(fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray]) -> None:
    card, X, _ = fitted
    text = card.to_json()
    again = WoEScorecard.from_json(text)
    assert np.array_equal(again.predict_proba(X), card.predict_proba(X))
    assert np.array_equal(again.score(X), card.score(X))
    assert again.to_json() == text
    assert again.reasons(X.iloc[[3]]) == card.reasons(X.iloc[[3]])


def test_fit_is_deterministic() -> None:
    X, y = synthetic(seed=4)
    assert WoEScorecard().fit(X, y).to_json() == WoEScorecard().fit(X, y).to_json()


@pytest.mark.parametrize(
    ("param", "value"),
    [("max_bins", 1), ("min_bin_frac", 0.7), ("C", 0.0), ("pdo", -5), ("smoothing", 0)],
)
def test_params_validated_at_fit(param: str, value: Any) -> None:
    X, y = synthetic(200)
    card = WoEScorecard()
    setattr(card, param, value)
    with pytest.raises(ValueError, match=param):
        card.fit(X, y)


def test_predict_requires_fit_and_columns(
    fitted: tuple[WoEScorecard, pd.DataFrame, np.ndarray],
) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        WoEScorecard().score(pd.DataFrame({"a": [1.0]}))
    card, X, _ = fitted
    with pytest.raises(ValueError, match="debt_ratio"):
        card.score(X.drop(columns=["debt_ratio"]))
