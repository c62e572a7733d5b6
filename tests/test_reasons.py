"""Fraud reasons two ways, on the committed fraud model and realistic rows.

Rows are the offline features of a generated world (the simulator that made the default
world, smaller and with another seed; events after its first 14 days, when every state
is warm). On them path attribution adds up to the raw margin exactly, its reasons agree
with TreeSHAP's at least as often as stated below, and the `reasons_method` /
``method`` switch picks the computation asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from risk_service import explain
from risk_service import features as fs
from risk_service.bundles import Registry, VerifiedBundle, verify_bundle
from risk_service.config import DEFAULTS
from risk_service.fraud_model import REASONS_METHODS, FraudModel
from training.simulate import generate_world

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = list(fs.FEATURE_NAMES)
# bias + contributions vs the margin (see tests/test_forest.py)
ADDITIVITY_TOL = 1e-11

# Agreement of path attribution's reasons with TreeSHAP's (`explain.compare_reasons`) on
# the 261 events the committed model sends to review or declines in this world. Measured:
# top-1 54%, top-3 as a set 41%, top-3 share 79%, top-1 within TreeSHAP's top-3 94%
# (explain.py has the default world's figures). The floors sit a few points below: a
# change that loses agreement fails here; top-1 near 55% is why TreeSHAP stays the default.
FLOORS = {"top1": 0.48, "top3_set": 0.35, "top3_share": 0.72, "top1_in_top3": 0.88}


@pytest.fixture(scope="module")
def bundle() -> VerifiedBundle:
    registry = Registry(MODELS)
    version = registry.champion("fraud")
    assert version is not None
    return verify_bundle(registry.bundle_dir("fraud", version), expected_kind="fraud")


@pytest.fixture(scope="module")
def model(bundle: VerifiedBundle) -> FraudModel:
    return FraudModel(bundle)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    world = generate_world(accounts=2000, days=60, seed=11)
    X = fs.compute_offline_features(world.events, world.accounts)[NAMES].to_numpy()
    times = pd.to_datetime(world.events["timestamp"], utc=True)
    warm = (times >= times.min() + pd.Timedelta(days=14)).to_numpy()
    return np.ascontiguousarray(X[warm], dtype=np.float64)


@pytest.fixture(scope="module")
def probabilities(model: FraudModel, rows: np.ndarray) -> np.ndarray:
    return model.predict_proba(rows)


@pytest.fixture(scope="module")
def flagged(model: FraudModel, rows: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Rows at or above the review threshold (review and decline)."""
    out = rows[probabilities >= model.thresholds["review"]]
    assert len(out) >= 150, f"only {len(out)} flagged rows"
    return out


def test_path_attribution_adds_up_to_the_margin(
    model: FraudModel, rows: np.ndarray, probabilities: np.ndarray
) -> None:
    """On realistic rows, flagged ones, NaN-heavy ones and odd categories."""
    rng = np.random.default_rng(0)
    risky = np.flatnonzero(probabilities >= 0.5)[:1000]
    sample = rows[np.concatenate([rng.choice(len(rows), 3000, replace=False), risky])]
    nan_heavy = sample[:1000].copy()
    nan_heavy[rng.random(nan_heavy.shape) < 0.5] = np.nan
    odd = sample[:500].copy()
    for name in explain.CATEGORIES:  # unseen, negative and NaN category codes
        odd[:, NAMES.index(name)] = rng.choice([np.nan, -1.0, 0.0, 2.5, 63.0, 1e10], len(odd))
    X = np.concatenate([sample, nan_heavy, odd])
    assert np.isnan(X).mean() > 0.15

    contrib = model.forest.path_contributions(X)
    margin = model.forest.predict_raw(X)
    np.testing.assert_allclose(contrib.sum(axis=1), margin, rtol=0, atol=ADDITIVITY_TOL)
    # the bias is the same for every row: the sum of the trees' root values
    np.testing.assert_array_equal(contrib[:, -1], contrib[0, -1])
    # TreeSHAP decomposes the same margin, around another constant bias (count-weighted means)
    shap = np.asarray(model.booster.predict(X[:200], pred_contrib=True, num_threads=1))
    np.testing.assert_allclose(shap.sum(axis=1), margin[:200], rtol=0, atol=1e-9)
    np.testing.assert_allclose(shap[:, -1], shap[0, -1], rtol=0, atol=1e-12)
    # categorical splits were crossed and credited
    cats = [NAMES.index(name) for name in explain.CATEGORIES]
    assert (np.abs(contrib[:, cats]) > 0).any(axis=0).sum() >= 3


def test_path_reasons_agree_with_treeshap_above_the_floors(
    model: FraudModel, flagged: np.ndarray
) -> None:
    path = model.contributions(flagged, method="path")
    shap = model.contributions(flagged, method="treeshap")
    agreement = explain.compare_reasons(NAMES, flagged, path, shap)
    print(f"{len(flagged)} flagged rows: {agreement}")
    for key, floor in FLOORS.items():
        assert agreement[key] >= floor, (key, agreement)
    # the same feature contributes in the same direction, mostly: per-row correlation
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(path, shap, strict=True)]
    assert np.median(corr) > 0.85
    # identical inputs give identical answers (nothing random, nothing stateful)
    assert explain.compare_reasons(NAMES, flagged, shap, shap)["top3_set"] == 1.0


@pytest.fixture
def booster_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every `lgb.Booster.predict` call from here on."""
    calls: list[dict[str, Any]] = []
    original = lgb.Booster.predict

    def spy(self: lgb.Booster, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lgb.Booster, "predict", spy)
    return calls


def test_reasons_method_switch(
    bundle: VerifiedBundle, flagged: np.ndarray, booster_calls: list[dict[str, Any]]
) -> None:
    X = flagged[:20]
    calls = booster_calls
    assert DEFAULTS["REASONS_METHOD"] in REASONS_METHODS
    by_default = FraudModel(bundle)
    assert by_default.reasons_method == DEFAULTS["REASONS_METHOD"] == "treeshap"
    assert by_default.treeshap is not None

    path_model = FraudModel(bundle, reasons_method="path")
    calls.clear()
    path = path_model.contributions(X)
    np.testing.assert_array_equal(path, path_model.forest.path_contributions(X)[:, :-1])
    shap = path_model.contributions(X, method="treeshap")  # a call may override the model
    np.testing.assert_array_equal(shap, by_default.contributions(X))
    assert calls == []  # no LightGBM call at all: both on the compiled forest
    want = path_model.booster.predict(X, pred_contrib=True, num_threads=1)[:, :-1]
    np.testing.assert_allclose(shap, want, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(by_default.contributions(X, method="path"), path)
    assert path.shape == shap.shape == (len(X), len(NAMES))
    assert not np.allclose(path, shap)

    with pytest.raises(ValueError, match="REASONS_METHOD must be one of path, treeshap"):
        FraudModel(bundle, reasons_method="shap")
    with pytest.raises(ValueError, match="REASONS_METHOD"):
        by_default.contributions(X, method="saabas")


def test_treeshap_falls_back_to_lightgbm_single_threaded(
    bundle: VerifiedBundle,
    flagged: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    booster_calls: list[dict[str, Any]],
) -> None:
    """A model the compiled TreeSHAP refuses still explains itself, through LightGBM with one
    thread (its default OpenMP threads collapse a web worker's throughput)."""
    import risk_service.treeshap as treeshap

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("TreeSHAP needs the text model's leaf_count and internal_count")

    expected = FraudModel(bundle).contributions(flagged[:10])
    assert booster_calls == []  # the compiled TreeSHAP
    monkeypatch.setattr(treeshap, "ExactTreeShap", refuse)
    model = FraudModel(bundle)
    assert model.treeshap is None
    got = model.contributions(flagged[:10])
    calls = booster_calls
    assert len(calls) == 1 and calls[0]["pred_contrib"] is True and calls[0]["num_threads"] == 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_reasons_look_the_same_either_way(model: FraudModel, flagged: np.ndarray) -> None:
    """`top_reasons` output has the same form whichever method made the contributions."""
    for method in REASONS_METHODS:
        contributions = model.contributions(flagged[:50], method=method)
        for x, c in zip(flagged[:50], contributions, strict=True):
            reasons = explain.top_reasons(NAMES, x, c)
            assert 3 <= len(reasons) <= 5
            for reason in reasons:
                assert set(reason) == {"feature", "value", "contribution", "text"}
                assert reason["feature"] in NAMES and isinstance(reason["text"], str)
                assert reason["contribution"] == round(float(c[NAMES.index(reason["feature"])]), 6)
            shown = [r["contribution"] for r in reasons]
            assert shown == sorted(shown, reverse=True) and shown[0] > 0


def test_one_rows_calibration_is_the_batchs_to_the_bit() -> None:
    """A request's one row takes a scalar path through the Platt map; the backtest calibrates
    arrays. The same raw score must give the same probability, bit for bit."""
    from risk_service.fraud_model import PlattMap

    rng = np.random.default_rng(5)
    raw = np.concatenate(
        [rng.random(20_000), rng.random(500) * 1e-8, 1 - rng.random(500) * 1e-8, [0.0, 1.0]]
    )
    for calibrate in (PlattMap(0.93, -0.21), PlattMap(1.7, 2.4), PlattMap(0.4, -3.0)):
        batch = calibrate(raw)
        one_by_one = np.concatenate([calibrate(raw[i : i + 1]) for i in range(len(raw))])
        assert np.array_equal(batch, one_by_one)
        assert calibrate.one(float(raw[7])) == batch[7]
    assert np.isnan(PlattMap(1.0, 0.0)(np.array([np.nan]))[0])
