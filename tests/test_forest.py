"""The compiled forest equals `lightgbm.Booster.predict` to 1e-12 on every row.

Synthetic models cover NaN / Zero / None missing types, one-hot-style and bitset
categorical splits, best_iteration below the trees trained, and a non-default sigmoid;
rows mix training-like values with adversarial ones (exact thresholds and their
neighbours, ±inf, NaN, -0.0, sub-kZeroThreshold values, huge values, unseen, negative,
fractional and out-of-int32 categories). The committed fraud and credit champions are
checked the same way.

Path attribution (`CompiledForest.path_contributions`) equals a brute-force walk of
LightGBM's own decision paths (`pred_leaf`) through `dump_model()`, and its bias plus
contributions is the raw margin on every row. (Realistic rows and the comparison with
TreeSHAP on the committed fraud model: tests/test_reasons.py.)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from risk_service.forest import K_ZERO_THRESHOLD, CompiledForest

MODELS = Path(__file__).resolve().parents[1] / "models"
TOL = 1e-12
# bias + contributions vs the margin: a few hundred float64 terms below ~10 each, summed in
# two different orders, differ by ~1e-14; anything near 1e-11 would be a lost or doubled term
ADDITIVITY_TOL = 1e-11
N_ROWS = 4000
CATEGORICAL = [4, 5, 6]
CARDINALITY = {4: 3, 5: 12, 6: 45}

NUMERIC_SPECIALS = [
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    1e-36,
    -1e-36,
    K_ZERO_THRESHOLD,
    -K_ZERO_THRESHOLD,
    np.nextafter(K_ZERO_THRESHOLD, 1.0),
    1e300,
    -1e300,
    np.finfo(np.float64).max,
    -np.finfo(np.float64).max,
    5e-324,
]
CATEGORY_SPECIALS = [
    np.nan,
    np.inf,
    -np.inf,
    -0.0,
    -0.5,
    -0.999,
    -1.0,
    -3.0,
    0.5,
    2.7,
    31.0,
    32.0,
    63.0,
    64.0,
    100.0,
    1000.0,
    2.0**31 - 1,
    2.0**31,
    -(2.0**31),
    -(2.0**31) - 1,
    1e10,
    -1e10,
    1e300,
]


# ------------------------------------------------------------------ synthetic models


def synthetic_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seven features: four numeric (NaNs, many exact zeros, wide range), three categorical."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, 7))
    X[:, 0] = rng.normal(size=n)
    X[:, 1] = np.where(rng.random(n) < 0.3, 0.0, rng.exponential(2.0, n))
    X[:, 2] = rng.uniform(-1e6, 1e6, n)
    X[:, 3] = rng.integers(-5, 20, n).astype(float)
    for col, k in CARDINALITY.items():
        X[:, col] = rng.integers(0, k, n).astype(float)
    X[rng.random(n) < 0.15, 0] = np.nan
    X[rng.random(n) < 0.05, 1] = np.nan
    X[rng.random(n) < 0.05, 5] = np.nan
    effect5 = rng.normal(0, 1.5, CARDINALITY[5])
    effect6 = rng.normal(0, 1.5, CARDINALITY[6])
    logit = (
        np.nan_to_num(X[:, 0], nan=1.0)
        + 0.6 * np.nan_to_num(X[:, 1], nan=-2.0)
        - 0.8 * (X[:, 1] == 0)
        + X[:, 2] / 1e6
        + 0.1 * X[:, 3]
        + (X[:, 4] == 1)
        + np.where(np.isnan(X[:, 5]), 1.0, effect5[np.nan_to_num(X[:, 5]).astype(int)])
        + effect6[X[:, 6].astype(int)]
        - 1.0
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return X, y


BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "verbose": -1,
    "num_leaves": 15,
    "learning_rate": 0.2,
    "min_data_in_leaf": 5,
    "min_data_per_group": 5,
    "cat_smooth": 1.0,
    "cat_l2": 1.0,
    "max_cat_to_onehot": 4,
    "num_threads": 1,
    "seed": 7,
    "deterministic": True,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "nan_bitset": {},
    "onehot": {"max_cat_to_onehot": 64},
    "zero_as_missing": {"zero_as_missing": True},
    "no_missing": {"use_missing": False},
    "sigmoid_early_stop": {"sigmoid": 0.7, "num_leaves": 31, "learning_rate": 0.5},
}


def train(name: str) -> lgb.Booster:
    X, y = synthetic_data(3000, seed=1)
    params = {**BASE_PARAMS, **CONFIGS[name]}
    train_set = lgb.Dataset(X[:2400], y[:2400], categorical_feature=CATEGORICAL)
    if name != "sigmoid_early_stop":
        return lgb.train(params, train_set, num_boost_round=40)
    valid = lgb.Dataset(X[2400:], y[2400:], reference=train_set)
    return lgb.train(
        params,
        train_set,
        num_boost_round=200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        keep_training_booster=True,  # keep the trees after best_iteration
    )


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request: pytest.FixtureRequest) -> tuple[str, lgb.Booster]:
    return request.param, train(request.param)


# ------------------------------------------------------------------------ dump walks


def splits(dump: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for tree in dump["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                yield node
                stack += [node["left_child"], node["right_child"]]


def numeric_thresholds(dump: dict[str, Any]) -> dict[int, list[float]]:
    """Per feature, every numeric threshold and its two neighbouring doubles."""
    out: dict[int, list[float]] = {}
    for node in splits(dump):
        if node["decision_type"] == "<=":
            t = float(node["threshold"])
            out.setdefault(node["split_feature"], []).extend(
                [t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)]
            )
    return out


# ----------------------------------------------------------------------- adversarial


def adversarial_rows(
    base: np.ndarray,
    categorical: set[int],
    thresholds: dict[int, list[float]],
    n: int,
    seed: int,
) -> np.ndarray:
    """Rows whose cells are training-like (50%), special (25%) or threshold values (25%)."""
    rng = np.random.default_rng(seed)
    X = base[rng.integers(0, len(base), n)].copy()
    for col in range(X.shape[1]):
        specials = CATEGORY_SPECIALS if col in categorical else NUMERIC_SPECIALS
        pick = rng.random(n)
        special = pick < 0.25
        X[special, col] = rng.choice(np.asarray(specials), int(special.sum()))
        edges = thresholds.get(col, [])
        at_edge = (pick >= 0.25) & (pick < 0.5)
        if edges:
            X[at_edge, col] = rng.choice(np.asarray(edges), int(at_edge.sum()))
    return X


def assert_equal_to_lightgbm(forest: CompiledForest, booster: lgb.Booster, X: np.ndarray) -> None:
    want_raw = booster.predict(X, raw_score=True, num_threads=1)
    want_proba = booster.predict(X, num_threads=1)
    got_raw = forest.predict_raw(X)
    got_proba = forest.predict_proba(X)
    assert got_raw.dtype == np.float64 and got_raw.shape == (len(X),)
    np.testing.assert_allclose(got_raw, want_raw, rtol=0, atol=TOL)
    np.testing.assert_allclose(got_proba, want_proba, rtol=0, atol=TOL)


# ------------------------------------------------------------------- synthetic tests


def test_synthetic_models_exercise_the_semantics_they_claim(
    trained: tuple[str, lgb.Booster],
) -> None:
    name, booster = trained
    nodes = list(splits(booster.dump_model()))
    cats = [n for n in nodes if n["decision_type"] == "=="]
    numeric_missing = {n["missing_type"] for n in nodes if n["decision_type"] == "<="}
    assert cats, "no categorical split"
    n_categories = [len(str(n["threshold"]).split("||")) for n in cats]
    if name == "onehot":
        assert set(n_categories) == {1}
    elif name == "nan_bitset":
        assert max(n_categories) > 1 and "NaN" in numeric_missing
        assert any(n["missing_type"] == "NaN" for n in cats)
    elif name == "zero_as_missing":
        assert "Zero" in numeric_missing
    elif name == "no_missing":
        assert {n["missing_type"] for n in nodes} == {"None"}
    else:
        assert 0 < booster.best_iteration < booster.num_trees()


def test_synthetic_models_match_lightgbm(trained: tuple[str, lgb.Booster]) -> None:
    _, booster = trained
    base, _ = synthetic_data(2000, seed=2)
    X = adversarial_rows(
        base, set(CATEGORICAL), numeric_thresholds(booster.dump_model()), N_ROWS, seed=3
    )
    assert_equal_to_lightgbm(CompiledForest.from_booster(booster), booster, X)
    # As the service loads it: the model string, all trees in it.
    saved = lgb.Booster(model_str=booster.model_to_string())
    assert_equal_to_lightgbm(CompiledForest.from_model_string(saved.model_to_string()), saved, X)


def test_best_iteration_is_respected() -> None:
    booster = train("sigmoid_early_stop")
    forest = CompiledForest.from_booster(booster)
    assert forest.num_trees == booster.best_iteration < booster.num_trees()
    assert forest.sigmoid == 0.7


def test_infinite_thresholds_are_kept() -> None:
    """LightGBM can split at +inf; dump_model() would print 1e300 and misroute inf / DBL_MAX."""
    booster = train("onehot")
    lines = booster.model_to_string().splitlines()
    thresholds = [t for line in lines if line.startswith("threshold=") for t in line[10:].split()]
    assert "inf" in thresholds
    forest = CompiledForest.from_booster(booster)
    base, _ = synthetic_data(500, seed=14)
    for col in range(4):
        for value in (np.inf, np.finfo(np.float64).max, 1e300, -np.inf):
            X = base.copy()
            X[:, col] = value
            want = booster.predict(X, raw_score=True, num_threads=1)
            np.testing.assert_allclose(forest.predict_raw(X), want, rtol=0, atol=TOL)


def test_nan_category_as_zero_mode_treats_nan_as_category_zero() -> None:
    """The ARM cast (NaN -> 0) path, checked on a model whose splits all have missing None."""
    booster = train("no_missing")
    dump = booster.dump_model()
    base, _ = synthetic_data(2000, seed=4)
    X = adversarial_rows(base, set(CATEGORICAL), numeric_thresholds(dump), N_ROWS, seed=5)
    arm = CompiledForest(booster.model_to_string(), nan_is_category_zero=True)
    want = booster.predict(np.where(np.isnan(X), 0.0, X), raw_score=True, num_threads=1)
    np.testing.assert_allclose(arm.predict_raw(X), want, rtol=0, atol=TOL)


def test_single_rows_and_input_forms() -> None:
    booster = train("nan_bitset")
    forest = CompiledForest.from_booster(booster)
    base, _ = synthetic_data(50, seed=6)
    want = booster.predict(base, num_threads=1)
    for i, row in enumerate(base):
        assert forest.predict_proba(row.reshape(1, -1))[0] == pytest.approx(want[i], abs=TOL)
    assert forest.predict_proba(base[0])[0] == pytest.approx(want[0], abs=TOL)  # 1-D row
    single = base.astype(np.float32)
    want_single = booster.predict(single, num_threads=1)
    np.testing.assert_allclose(forest.predict_proba(single), want_single, rtol=0, atol=TOL)
    np.testing.assert_allclose(
        forest.predict_proba(np.asfortranarray(base)), want, rtol=0, atol=TOL
    )
    readonly = base.copy()
    readonly.flags.writeable = False
    np.testing.assert_allclose(forest.predict_proba(readonly), want, rtol=0, atol=TOL)
    assert forest.predict_raw(np.empty((0, 7))).shape == (0,)
    with pytest.raises(ValueError, match="7 features"):
        forest.predict_raw(np.zeros((1, 6)))


def test_concurrent_calls_agree_with_sequential() -> None:
    booster = train("nan_bitset")
    forest = CompiledForest.from_booster(booster)
    base, _ = synthetic_data(400, seed=8)
    want = forest.predict_proba(base)
    errors: list[int] = []

    def work(offset: int) -> None:
        for k in range(300):
            i = (offset + k) % len(base)
            if forest.predict_proba(base[i : i + 1])[0] != want[i]:
                errors.append(i)

    threads = [threading.Thread(target=work, args=(97 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------ path attribution


def brute_force_path_contributions(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    """Saabas attribution from LightGBM's decision paths (`pred_leaf`) and `dump_model()`.

    A split node's value is its internal_value as the text model writes it (6 significant
    digits, C++ ``%g``); a leaf's is its leaf_value (exact).
    """
    dump = booster.dump_model()
    leaves = np.asarray(booster.predict(X, pred_leaf=True, num_threads=1)).reshape(len(X), -1)
    out = np.zeros((len(X), X.shape[1] + 1))
    for t, tree in enumerate(dump["tree_info"]):
        root = tree["tree_structure"]
        if "leaf_value" in root:  # a one-leaf tree: all bias
            out[:, -1] += root["leaf_value"]
            continue
        paths: dict[int, list[tuple[int, float, float]]] = {}  # leaf -> (feature, from, to)
        stack: list[tuple[dict[str, Any], list[tuple[int, float, float]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            if "leaf_index" in node:
                paths[node["leaf_index"]] = path
                continue
            value = float(f"{node['internal_value']:.6g}")
            for child in (node["left_child"], node["right_child"]):
                to = (
                    child["leaf_value"]
                    if "leaf_index" in child
                    else float(f"{child['internal_value']:.6g}")
                )
                stack.append((child, [*path, (node["split_feature"], value, to)]))
        bias = float(f"{root['internal_value']:.6g}")
        for r in range(len(X)):
            out[r, -1] += bias
            for feature, start, end in paths[int(leaves[r, t])]:
                out[r, feature] += end - start
    return out


def test_path_contributions_follow_lightgbms_paths(trained: tuple[str, lgb.Booster]) -> None:
    _, booster = trained
    forest = CompiledForest.from_booster(booster)
    base, _ = synthetic_data(1000, seed=15)
    X = adversarial_rows(base, set(CATEGORICAL), numeric_thresholds(booster.dump_model()), 600, 16)
    got = forest.path_contributions(X)
    assert got.shape == (len(X), X.shape[1] + 1) and got.dtype == np.float64
    np.testing.assert_allclose(got, brute_force_path_contributions(booster, X), rtol=0, atol=TOL)
    # additive: bias + contributions is the margin, on every row
    np.testing.assert_allclose(got.sum(axis=1), forest.predict_raw(X), rtol=0, atol=ADDITIVITY_TOL)
    # every feature the trees split on gets credit somewhere; the others never do
    used = {n["split_feature"] for n in splits(booster.dump_model())}
    credited = set(np.flatnonzero(np.abs(got[:, :-1]).sum(axis=0) > 0).tolist())
    assert credited <= used and len(credited) >= len(used) - 1


def test_path_contributions_of_single_rows_and_one_leaf_trees() -> None:
    X, y = synthetic_data(600, seed=17)
    params = {**BASE_PARAMS, "min_data_in_leaf": 400, "num_leaves": 2}
    # leaves of >= 400 rows out of 600: some rounds cannot split (a one-leaf tree)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=CATEGORICAL), 30)
    forest = CompiledForest.from_booster(booster)
    one_leaf = [t for t in booster.dump_model()["tree_info"] if t["num_leaves"] == 1]
    assert one_leaf, "no one-leaf tree"
    batch = forest.path_contributions(X[:50])
    for i in range(50):
        np.testing.assert_array_equal(forest.path_contributions(X[i]), batch[i : i + 1])
    np.testing.assert_allclose(
        batch, brute_force_path_contributions(booster, X[:50]), rtol=0, atol=TOL
    )
    np.testing.assert_allclose(
        batch.sum(axis=1), forest.predict_raw(X[:50]), rtol=0, atol=ADDITIVITY_TOL
    )


def test_a_model_text_without_internal_values_predicts_but_refuses_path_attribution() -> None:
    booster = train("nan_bitset")
    text = "\n".join(
        line
        for line in booster.model_to_string().splitlines()
        if not line.startswith("internal_value=")
    )
    forest = CompiledForest.from_model_string(text)
    base, _ = synthetic_data(20, seed=18)
    np.testing.assert_allclose(
        forest.predict_raw(base), booster.predict(base, raw_score=True), rtol=0, atol=TOL
    )
    with pytest.raises(ValueError, match="internal_value"):
        forest.path_contributions(base)


# ------------------------------------------------------------------- other objectives


def test_regression_raw_matches_and_proba_is_refused() -> None:
    X, y = synthetic_data(1500, seed=9)
    params = {**BASE_PARAMS, "objective": "regression"}
    booster = lgb.train(params, lgb.Dataset(X, y + X[:, 3], categorical_feature=CATEGORICAL), 20)
    forest = CompiledForest.from_booster(booster)
    rows = adversarial_rows(X, set(CATEGORICAL), numeric_thresholds(booster.dump_model()), 500, 1)
    np.testing.assert_allclose(
        forest.predict_raw(rows), booster.predict(rows, num_threads=1), rtol=0, atol=TOL
    )
    with pytest.raises(ValueError, match="binary objective"):
        forest.predict_proba(rows)


def test_multiclass_is_refused() -> None:
    X, y = synthetic_data(600, seed=10)
    params = {**BASE_PARAMS, "objective": "multiclass", "num_class": 3}
    booster = lgb.train(params, lgb.Dataset(X, (y + (X[:, 3] > 5)).astype(int)), 3)
    with pytest.raises(ValueError, match="multiclass"):
        CompiledForest.from_booster(booster)


def test_linear_trees_are_refused() -> None:
    X, y = synthetic_data(600, seed=11)
    params = {**BASE_PARAMS, "linear_tree": True}
    booster = lgb.train(params, lgb.Dataset(X[:, :4], y), 3)
    with pytest.raises(ValueError, match="linear trees"):
        CompiledForest.from_booster(booster)


def test_random_forest_averaging_is_refused() -> None:
    X, y = synthetic_data(600, seed=12)
    params = {**BASE_PARAMS, "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.5}
    booster = lgb.train(params, lgb.Dataset(X[:, :4], y), 3)
    with pytest.raises(ValueError, match="average_output"):
        CompiledForest.from_booster(booster)


# ------------------------------------------------------------------ committed models


def champion_booster(kind: str) -> lgb.Booster:
    registry = json.loads((MODELS / "registry.json").read_text())
    version = registry[kind]["champion"]
    return lgb.Booster(model_str=(MODELS / kind / version / f"{kind}_lgbm.txt").read_text())


def feature_range_rows(booster: lgb.Booster, n: int, seed: int) -> np.ndarray:
    """Rows spanning each feature's training range (feature_infos), its split thresholds,
    NaNs, zeros and out-of-range values; categorical features get seen, unseen, negative
    and NaN codes."""
    rng = np.random.default_rng(seed)
    dump = booster.dump_model()
    thresholds = numeric_thresholds(dump)
    names = dump["feature_names"]
    X = np.empty((n, len(names)))
    for col, name in enumerate(names):
        info = dump["feature_infos"][name]
        values = info.get("values")
        if values:  # categorical (numeric features list no values)
            pool = np.asarray([*values, *CATEGORY_SPECIALS], dtype=np.float64)
            X[:, col] = rng.choice(pool, n)
            continue
        lo, hi = float(info["min_value"]), float(info["max_value"])
        span = max(hi - lo, 1.0)
        X[:, col] = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, n)
        edge = rng.random(n) < 0.3
        if thresholds.get(col):
            X[edge, col] = rng.choice(np.asarray(thresholds[col]), int(edge.sum()))
        special = rng.random(n) < 0.1
        X[special, col] = rng.choice(np.asarray(NUMERIC_SPECIALS), int(special.sum()))
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


@pytest.mark.parametrize("kind", ["fraud", "credit"])
def test_committed_champions_match_lightgbm(kind: str) -> None:
    booster = champion_booster(kind)
    forest = CompiledForest.from_booster(booster)
    assert forest.num_trees == booster.num_trees()
    assert forest.feature_names == booster.feature_name()
    assert_equal_to_lightgbm(forest, booster, feature_range_rows(booster, N_ROWS, seed=13))


@pytest.mark.parametrize("kind", ["fraud", "credit"])
def test_committed_champions_path_contributions(kind: str) -> None:
    """Adversarial rows (10% NaN on top of specials and exact thresholds, unseen/negative/NaN
    categories): brute force on 500 of them, additivity on all."""
    booster = champion_booster(kind)
    forest = CompiledForest.from_booster(booster)
    X = feature_range_rows(booster, N_ROWS, seed=19)
    got = forest.path_contributions(X)
    np.testing.assert_allclose(got.sum(axis=1), forest.predict_raw(X), rtol=0, atol=ADDITIVITY_TOL)
    np.testing.assert_allclose(
        got[:500], brute_force_path_contributions(booster, X[:500]), rtol=0, atol=TOL
    )
