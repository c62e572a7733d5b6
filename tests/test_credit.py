"""training.credit (and training.tabular) on the real German and Taiwan credit datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from training.credit import (
    BANDS,
    CreditModels,
    cross_validate_credit,
    evaluate_credit,
    group_rates,
    recommended_limit,
    train_credit_models,
)
from training.tabular import TabularEncoder, load_application_table, load_german, load_taiwan

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
GERMAN = DATASETS / "german.data"
TAIWAN = DATASETS / "taiwan_default_of_credit_card_clients.csv"

pytestmark = pytest.mark.skipif(
    not GERMAN.is_file() or not TAIWAN.is_file(),
    reason=f"public credit datasets not found beside the checkout ({DATASETS})",
)


@pytest.fixture(scope="module")
def german() -> tuple[pd.DataFrame, np.ndarray]:
    frame = load_german(GERMAN)
    return frame.drop(columns=["defaulted"]), frame["defaulted"].to_numpy()


@pytest.fixture(scope="module")
def taiwan() -> tuple[pd.DataFrame, np.ndarray]:
    frame = load_taiwan(TAIWAN)
    return frame.drop(columns=["defaulted"]), frame["defaulted"].to_numpy()


def split(
    X: pd.DataFrame, y: np.ndarray, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return X.iloc[tr], y[tr], X.iloc[va], y[va], X.iloc[te], y[te]


@pytest.fixture(scope="module")
def german_models(german: tuple[pd.DataFrame, np.ndarray]) -> tuple[CreditModels, tuple]:
    parts = split(*german)
    return train_credit_models(*parts, seed=0), parts


# ------------------------------------------------------------------ loaders / encoder
def test_load_german(german: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = german
    assert X.shape == (1000, 20)
    assert y.sum() == 300  # code 2 = bad
    assert X["checking_status"].iloc[0] == "A11" and X["duration_months"].iloc[0] == 6


def test_encoder_drops_protected_and_round_trips(
    german: tuple[pd.DataFrame, np.ndarray], taiwan: tuple[pd.DataFrame, np.ndarray]
) -> None:
    enc = TabularEncoder().fit(german[0])
    assert enc.dropped_protected_ == ["personal_status_sex"]
    assert "personal_status_sex" not in enc.feature_names_
    enc_t = TabularEncoder().fit(taiwan[0])
    assert enc_t.dropped_protected_ == ["SEX", "MARRIAGE"] and enc_t.dropped_excluded_ == ["ID"]
    again = TabularEncoder.from_json(enc.to_json())
    a, b = enc.transform(german[0]), again.transform(german[0])
    assert a.equals(b) and all(dt == np.float64 for dt in a.dtypes)
    unseen = german[0].iloc[[0]].copy()
    unseen["purpose"] = "A999"
    assert np.isnan(enc.transform(unseen)["purpose"].iloc[0])
    with pytest.raises(ValueError, match="already encoded"):
        enc.transform(enc.transform(german[0]))  # codes where text levels are expected


def test_load_application_table_csv_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    assert load_application_table(tmp_path / "t.csv").equals(frame)
    assert load_application_table(tmp_path / "t.parquet").equals(frame)
    with pytest.raises(ValueError, match="unsupported"):
        load_application_table(tmp_path / "t.xlsx")


# ------------------------------------------------------------------ literature figures
def test_german_cv_auc_matches_literature(german: tuple[pd.DataFrame, np.ndarray]) -> None:
    result = cross_validate_credit(*german, folds=5, seed=0)
    assert max(result["champion_auc_mean"], result["challenger_auc_mean"]) >= 0.77, result


def test_taiwan_cv_auc_matches_literature(taiwan: tuple[pd.DataFrame, np.ndarray]) -> None:
    result = cross_validate_credit(*taiwan, folds=5, seed=0)  # full data: a few seconds
    assert result["champion_auc_mean"] >= 0.75, result
    assert result["challenger_auc_mean"] >= 0.72, result


# ------------------------------------------------------------------ the trained bundle
def test_protected_columns_not_features(german_models: tuple[CreditModels, tuple]) -> None:
    models, _ = german_models
    assert "personal_status_sex" not in models.feature_names
    assert "personal_status_sex" not in models.scorecard.feature_names_in_
    assert models.meta()["dropped_protected"] == ["personal_status_sex"]
    assert models.calibration_method == "platt"  # 200 validation rows: too few for isotonic


def test_save_is_byte_identical_and_load_predicts_identically(
    tmp_path: Path, german_models: tuple[CreditModels, tuple]
) -> None:
    models, parts = german_models
    X_te = parts[4]
    again = train_credit_models(*parts, seed=0)
    a, b = tmp_path / "a", tmp_path / "b"
    files = models.save(a)
    assert again.save(b) == files
    assert set(files) == {
        "credit_lgbm.txt",
        "credit_calibrator.joblib",
        "scorecard.json",
        "scorecard_calibrator.joblib",
        "encoder.json",
        "credit_meta.json",
    }
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    loaded = CreditModels.load(a)
    assert np.array_equal(loaded.predict_pd(X_te), models.predict_pd(X_te))
    assert np.array_equal(loaded.predict_pd_challenger(X_te), models.predict_pd_challenger(X_te))
    row = X_te.iloc[[0]]
    assert loaded.reasons(row) == models.reasons(row)
    assert loaded.reasons_challenger(row) == models.reasons_challenger(row)


def test_isotonic_path_is_reproducible(
    tmp_path: Path, taiwan: tuple[pd.DataFrame, np.ndarray]
) -> None:
    X, y = taiwan
    X, _, y, _ = train_test_split(X, y, train_size=10_000, stratify=y, random_state=1)
    parts = split(X, y)
    first = train_credit_models(*parts[:4], seed=3)
    second = train_credit_models(*parts[:4], seed=3)
    assert first.calibration_method == "isotonic"
    files = first.save(tmp_path / "a")
    assert second.save(tmp_path / "b") == files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert {"SEX", "MARRIAGE", "ID"}.isdisjoint(first.feature_names)


def test_numeric_table_needs_no_encoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"util": rng.random(1500), "late": rng.integers(0, 4, 1500).astype(float)})
    y = (rng.random(1500) < 0.1 + 0.3 * X["util"] * (X["late"] > 0)).astype(int)
    models = train_credit_models(X[:1000], y[:1000], X[1000:], y[1000:], seed=1)
    assert models.encoder is None
    assert "encoder.json" not in models.save(tmp_path)
    assert CreditModels.load(tmp_path).predict_pd(X).shape == (1500,)


def test_reasons_name_features(german_models: tuple[CreditModels, tuple]) -> None:
    models, parts = german_models
    X_te = parts[4]
    pds = models.predict_pd(X_te)
    risky = X_te.iloc[[int(np.argmax(pds))]]
    champion = models.reasons(risky, top=3)
    assert 1 <= len(champion) <= 3
    assert all(r["feature"] in models.feature_names and r["contribution"] > 0 for r in champion)
    challenger = models.reasons_challenger(risky, top=3)
    assert challenger and all(
        not r["bin"].replace(".", "").isdigit()
        for r in challenger
        if r["feature"] in models.categorical
    )


# ------------------------------------------------------------------ rules and evaluation
def test_score_bands_and_limit() -> None:
    assert CreditModels.score(1 / 51)[()] == pytest.approx(600.0)
    assert CreditModels.score(1 / 101) - CreditModels.score(1 / 51) == pytest.approx(20.0, abs=0.01)
    cuts = [s for _, s in BANDS[:-1]]
    assert list(CreditModels.band(np.array([*cuts, 300.0]))) == ["A", "B", "C", "D", "E"]
    assert list(CreditModels.band(np.array([c - 0.01 for c in cuts]))) == ["B", "C", "D", "E"]
    limits = recommended_limit(
        np.array([0.0, 0.15, 0.3, 0.0]), 1000.0, [10_000, 10_000, 10_000, 500]
    )
    assert list(limits) == [3000.0, 1500.0, 0.0, 500.0]


def test_evaluate_credit(german_models: tuple[CreditModels, tuple]) -> None:
    models, (X_tr, _, _, _, X_te, y_te) = german_models
    report = evaluate_credit(models, X_te, y_te, X_ref=X_tr)
    for name in ("champion", "challenger"):
        m = report[name]
        assert 0.7 < m["roc_auc"] < 0.95
        assert m["gini"] == pytest.approx(2 * m["roc_auc"] - 1)
        assert 0 < m["ks"] < 1
        assert sum(b["n"] for b in m["by_band"]) == len(y_te)
    assert report["psi"]["champion_score"] < 0.25  # same population, random split
    assert set(report["psi"]["features"]) <= set(models.feature_names)
    assert models.metrics["valid"]["champion_auc"] > 0.6


def test_group_rates() -> None:
    df = pd.DataFrame({"sex": ["f", "f", "m", "m", "m"]})
    out = group_rates(df, "sex", np.array([1, 0, 1, 1, 1]), np.array([0, np.nan, 1, 0, 0]))
    assert out.loc["f", "approval_rate"] == 0.5 and out.loc["m", "approval_rate"] == 1.0
    assert out.loc["m", "default_rate_approved"] == pytest.approx(1 / 3)
    assert out.loc["f", "approval_ratio"] == 0.5


def test_trainer_validates_inputs(german: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = german
    with pytest.raises(ValueError, match="y_train"):
        train_credit_models(X[:100], np.zeros(100, int), X[100:200], y[100:200])
    with pytest.raises(ValueError, match="folds"):
        cross_validate_credit(X, y, folds=1)
