"""training.evaluate: every metric against scikit-learn or a brute-force loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from training import evaluate as ev


@pytest.fixture(params=[0, 1, 2])
def data(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    n = 400
    y = (rng.random(n) < 0.2).astype(int)
    # rounded scores: plenty of ties, the case where implementations differ
    score = np.round(rng.normal(size=n) + 1.2 * y, 1)
    return y, score


def test_roc_auc_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert ev.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ev.gini(y, s) == pytest.approx(2 * roc_auc_score(y, s) - 1, abs=1e-12)


def test_roc_auc_brute_force_pairs() -> None:
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(15, int), np.zeros(25, int)]
    s = rng.integers(0, 5, size=40).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert ev.roc_auc(y, s) == pytest.approx(brute)


def test_average_precision_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = data
    assert ev.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def _brute_recall_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    best = 0.0
    n_neg = (y == 0).sum()
    for t in np.r_[np.unique(s), np.inf]:
        flagged = s >= t
        if (flagged & (y == 0)).sum() / n_neg <= fpr + 1e-12:
            best = max(best, (flagged & (y == 1)).sum() / (y == 1).sum())
    return best


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2, 0.5, 1.0])
def test_recall_at_fpr_brute_force(data: tuple[np.ndarray, np.ndarray], fpr: float) -> None:
    y, s = data
    assert ev.recall_at_fpr(y, s, fpr) == pytest.approx(_brute_recall_at_fpr(y, s, fpr))
    t = ev.threshold_at_fpr(y, s, fpr)
    assert ((s >= t) & (y == 0)).sum() <= np.floor(fpr * (y == 0).sum())


def test_amount_weighted_recall() -> None:
    y = np.array([1, 1, 0, 1, 0])
    s = np.array([0.9, 0.2, 0.8, 0.6, 0.1])
    amount = np.array([100.0, 50.0, 999.0, 25.0, 1.0])
    assert ev.amount_weighted_recall(y, s, amount, 0.5) == pytest.approx(125 / 175)
    with pytest.raises(ValueError, match="no amount"):
        ev.amount_weighted_recall(np.zeros(5, int), s, amount, 0.5)


def test_card_precision_at_k_brute_force() -> None:
    rng = np.random.default_rng(3)
    n = 600
    days = rng.integers(0, 4, n)
    cards = rng.integers(0, 40, n)
    y = (rng.random(n) < 0.1).astype(int)
    s = rng.random(n) + 0.3 * y
    k = 7
    mean, per_day = ev.card_precision_at_k(days, cards, y, s, k=k)
    expected = {}
    for d in np.unique(days):
        m = days == d
        best: dict[int, float] = {}
        fraud: dict[int, int] = {}
        for c, yy, ss in zip(cards[m], y[m], s[m], strict=True):
            best[c] = max(best.get(c, -np.inf), ss)
            fraud[c] = max(fraud.get(c, 0), yy)
        top = sorted(best, key=lambda c: (-best[c], c))[:k]
        expected[d] = np.mean([fraud[c] for c in top])
    assert list(per_day.index) == sorted(expected)
    assert np.allclose(per_day.to_numpy(), [expected[d] for d in sorted(expected)])
    assert mean == pytest.approx(np.mean(list(expected.values())))


def test_card_precision_fewer_cards_than_k() -> None:
    mean, per_day = ev.card_precision_at_k([0, 0, 0], ["a", "a", "b"], [0, 1, 0], [0.1, 0.2, 0.9])
    assert mean == pytest.approx(0.5)  # 2 cards, one compromised
    assert per_day.loc[0] == pytest.approx(0.5)


def test_ks_brute_force_and_scipy(data: tuple[np.ndarray, np.ndarray]) -> None:
    from scipy.stats import ks_2samp

    y, s = data
    brute = max(abs(np.mean(s[y == 1] <= t) - np.mean(s[y == 0] <= t)) for t in np.unique(s))
    assert ev.ks_statistic(y, s) == pytest.approx(brute)
    assert ev.ks_statistic(y, s) == pytest.approx(ks_2samp(s[y == 1], s[y == 0]).statistic)


def test_psi_brute_force_and_reading() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=5000)
    a = rng.normal(0.3, 1.0, size=3000)
    cuts = np.unique(np.quantile(e, np.linspace(0, 1, 11)[1:-1]))
    pe = np.array([np.mean(np.searchsorted(cuts, e, side="right") == i) for i in range(10)])
    pa = np.array([np.mean(np.searchsorted(cuts, a, side="right") == i) for i in range(10)])
    pe, pa = np.maximum(pe, ev.PSI_EPSILON), np.maximum(pa, ev.PSI_EPSILON)
    assert ev.psi(e, a) == pytest.approx(np.sum((pa - pe) * np.log(pa / pe)))
    assert ev.psi(e, rng.normal(size=5000)) < 0.02
    assert ev.psi(e, rng.normal(1.5, 1.0, size=5000)) > 0.25


def test_psi_empty_bins_missing_and_categorical() -> None:
    e = np.r_[np.arange(100.0), [np.nan] * 10]
    a = np.full(50, 1000.0)  # everything in the top bin, no missing
    value = ev.psi(e, a)
    assert np.isfinite(value) and value > 1.0
    cats = ev.psi([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], categorical=True)
    assert cats == pytest.approx(0.0)
    assert ev.psi([0, 0, 1, 1], [0, 1, 1, 3], categorical=True) > 0.25


def test_information_value_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.choice(["a", "b", "c"], size=2000, p=[0.5, 0.3, 0.2])
    y = (rng.random(2000) < np.where(x == "a", 0.1, np.where(x == "b", 0.3, 0.5))).astype(int)
    iv = 0.0
    goods, bads = (y == 0).sum() + 1.5, (y == 1).sum() + 1.5  # 3 bins × 0.5 smoothing
    for level in "abc":
        g = ((x == level) & (y == 0)).sum() + 0.5
        b = ((x == level) & (y == 1)).sum() + 0.5
        iv += (g / goods - b / bads) * np.log((g / goods) / (b / bads))
    assert ev.information_value(x, y) == pytest.approx(iv)
    noise = rng.normal(size=2000)
    assert ev.information_value(noise, y) < 0.02
    assert ev.information_value(y + rng.normal(0, 0.3, 2000), y) > 0.5


def test_calibration_table() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(int)
    table = ev.calibration_table(y, p, bins=5)
    assert table["n"].sum() == 1000
    assert len(table) == 5
    first = p < table["upper"].iloc[0]
    assert table["mean_predicted"].iloc[0] == pytest.approx(p[first].mean())
    assert table["observed_rate"].iloc[0] == pytest.approx(y[first].mean())
    # well calibrated by construction
    assert np.allclose(table["mean_predicted"], table["observed_rate"], atol=0.08)
    uniform = ev.calibration_table(y, p, bins=[0.5])
    assert list(uniform["n"]) == [int((p < 0.5).sum()), int((p >= 0.5).sum())]


def test_expected_cost_curve() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.7, 0.3, 0.1])
    amount = np.array([100.0, 10.0, 40.0, 5.0])
    curve = ev.expected_cost_curve(y, p, amount, [0.0, 0.5, 1.1], ev.linear_cost(1.0, 5.0, 1.0))
    # t=0: flag all → 2 false alarms ×5 + 4 reviews = 14
    # t=0.5: flag 0,1 → missed 40 + 1 false alarm 5 + 2 reviews = 47
    # t=1.1: flag none → missed 140
    assert list(curve["cost"]) == [14.0, 47.0, 140.0]
    assert list(curve["tp"]) == [2, 1, 0]
    assert curve["value_caught"].iloc[1] == 100.0
    assert isinstance(curve, pd.DataFrame)


def test_undefined_metrics_raise() -> None:
    y0 = np.zeros(10, int)
    s = np.linspace(0, 1, 10)
    for fn in (ev.roc_auc, ev.gini, ev.ks_statistic, ev.average_precision):
        with pytest.raises(ValueError):
            fn(y0, s)
    with pytest.raises(ValueError, match="positives"):
        ev.recall_at_fpr(y0, s, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        ev.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="only 0 and 1"):
        ev.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="fpr"):
        ev.recall_at_fpr([0, 1], [0.1, 0.2], 1.5)
