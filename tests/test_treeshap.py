"""Exact TreeSHAP on the compiled forest equals LightGBM's ``pred_contrib``.

The same synthetic models and adversarial rows as tests/test_forest.py (NaN / Zero / None
missing types, one-hot and bitset categorical splits, early stopping, exact thresholds,
±inf, sub-kZeroThreshold values, unseen and out-of-int32 categories), and the committed
fraud and credit champions on rows spanning their features (the fraud model has paths with
up to 18 distinct features, so up to 9 quadrature points).
"""

from __future__ import annotations

import re
import threading

import lightgbm as lgb
import numpy as np
import pytest
from test_forest import (
    BASE_PARAMS,
    CATEGORICAL,
    CONFIGS,
    adversarial_rows,
    champion_booster,
    feature_range_rows,
    numeric_thresholds,
    synthetic_data,
    train,
)

from risk_service.forest import CompiledForest
from risk_service.treeshap import ExactTreeShap

# Contributions are sums over a few thousand leaves of terms up to ~10, in another order than
# LightGBM's: they differ by ~1e-14. A lost or doubled leaf would be off by ~1e-3 or more.
TOL = 1e-10


def lightgbm_shap(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(X, pred_contrib=True, num_threads=1), dtype=np.float64)


def compiled(booster: lgb.Booster) -> ExactTreeShap:
    text = booster.model_to_string()
    return ExactTreeShap(text, CompiledForest(text))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_synthetic_models_match_lightgbm(name: str) -> None:
    booster = train(name)
    base, _ = synthetic_data(500, seed=2)
    X = adversarial_rows(
        base, set(CATEGORICAL), numeric_thresholds(booster.dump_model()), 1500, seed=3
    )
    want = lightgbm_shap(booster, X)
    assert np.abs(want[:, :-1]).max() > 0.1  # the rows do exercise the trees
    np.testing.assert_allclose(compiled(booster).contributions(X), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["fraud", "credit"])
def test_committed_champions_match_lightgbm(kind: str) -> None:
    booster = champion_booster(kind)
    X = feature_range_rows(booster, 600, seed=23)
    shap = compiled(booster)
    want = lightgbm_shap(booster, X)
    got = shap.contributions(X)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # the same reasons: our top 5 features carry LightGBM's top 5 contributions, in order
    ours = np.argsort(-got[:, :-1], axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(
        np.take_along_axis(want, ours, axis=1), -np.sort(-want[:, :-1], axis=1)[:, :5], atol=TOL
    )
    # additivity: bias plus contributions is the raw margin
    np.testing.assert_allclose(
        got.sum(axis=1), booster.predict(X, raw_score=True, num_threads=1), rtol=0, atol=TOL
    )


def test_quadrature_points_follow_each_trees_paths() -> None:
    """ceil(k/2) points per tree, k its most distinct features on a path: the fraud model's
    deepest paths need 9 (exact for degree 17), most trees fewer."""
    shap = compiled(champion_booster("fraud"))
    points = shap._tree_points
    assert points.max() == 9 and points.min() >= 1 and points.mean() < 7


def test_single_rows_one_leaf_trees_and_threads() -> None:
    X, y = synthetic_data(600, seed=17)
    params = {**BASE_PARAMS, "min_data_in_leaf": 400, "num_leaves": 2}
    # leaves of >= 400 rows out of 600: some rounds cannot split (a one-leaf tree)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=CATEGORICAL), 30)
    text = booster.model_to_string()
    assert [t for t in booster.dump_model()["tree_info"] if t["num_leaves"] == 1]
    shap = ExactTreeShap(text, CompiledForest(text))
    want = lightgbm_shap(booster, X)
    np.testing.assert_allclose(shap.contributions(X[0]), want[:1], rtol=0, atol=TOL)
    np.testing.assert_allclose(shap.contributions(X[:1].tolist()), want[:1], rtol=0, atol=TOL)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = shap.contributions(X)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got in results.values():
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="expected rows of 7 features"):
        shap.contributions(np.zeros((1, 6)))


def test_a_model_text_without_counts_is_refused() -> None:
    booster = train("nan_bitset")
    text = re.sub(r"^(leaf|internal)_count=.*\n", "", booster.model_to_string(), flags=re.M)
    with pytest.raises(ValueError, match="leaf_count and internal_count"):
        ExactTreeShap(text, CompiledForest(text))
