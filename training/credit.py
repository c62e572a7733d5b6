"""Credit models: a LightGBM probability-of-default champion and a WoE scorecard challenger.

`train_credit_models` fits both on a training table with early stopping and
calibration on a validation table, and returns `CreditModels`, which predicts
calibrated PDs, turns them into scorecard points and bands, recommends a limit
and explains a decision. `CreditModels.save` writes a bundle of plain files
(LightGBM text, JSON, two small joblib calibrators) that are byte-identical for
the same data and seed, so the bundle's SHA-256 manifest is reproducible.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import sklearn
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from training import evaluate as ev
from training.scorecard import ScoreScale, WoEScorecard
from training.tabular import TabularEncoder, wants_encoder

__all__ = [
    "BANDS",
    "ISOTONIC_MIN_ROWS",
    "CreditModels",
    "cross_validate_credit",
    "evaluate_credit",
    "group_rates",
    "lgbm_params",
    "recommended_limit",
    "train_credit_models",
]

_META_FORMAT = "credit-models/1"

ISOTONIC_MIN_ROWS = 2000
"""Validation rows needed for isotonic calibration; below it Platt scaling is used,
because isotonic steps fitted on a few hundred rows are mostly noise."""

PD_CLIP = 1e-4
"""Calibrated PDs are kept in [PD_CLIP, 1 - PD_CLIP]: isotonic calibration can
return exactly 0 or 1, which no lender should believe (and which has no score)."""

SCALE = ScoreScale(pdo=20.0, base_score=600.0, base_odds=50.0)
"""DOMAIN.md scaling: 600 points at 50:1 good:bad odds, 20 points to double the odds."""

BANDS: tuple[tuple[str, float], ...] = (
    ("A", 580.0),  # PD below ~3.8%  (odds of good above ~25:1)
    ("B", 560.0),  # PD ~3.8% - 7.4%
    ("C", 540.0),  # PD ~7.4% - 13.8%
    ("D", 520.0),  # PD ~13.8% - 24.2%
    ("E", -np.inf),  # PD above ~24.2%
)
"""Score bands as (name, lowest score in band), best first. Each band is one
PDO step (20 points, i.e. the odds halve) wide; E is open-ended."""

FILES = (
    "credit_lgbm.txt",
    "credit_calibrator.joblib",
    "scorecard.json",
    "scorecard_calibrator.joblib",
    "encoder.json",
    "credit_meta.json",
)


def lgbm_params(seed: int = 0, num_threads: int = 1) -> dict[str, Any]:
    """Champion hyper-parameters: modest capacity, so 1,000-row tables do not overfit,
    and the settings that make LightGBM bit-for-bit reproducible."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": 0.05,
        "num_leaves": 8,
        "max_depth": 4,
        "min_child_samples": 20,
        "min_sum_hessian_in_leaf": 1e-3,
        "feature_fraction": 0.7,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 5.0,
        "cat_smooth": 10.0,
        "cat_l2": 10.0,
        "min_data_per_group": 20,
        "max_cat_threshold": 16,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": num_threads,
        "verbose": -1,
    }


NUM_BOOST_ROUND = 3000
EARLY_STOPPING_ROUNDS = 100


# ---------------------------------------------------------------- calibration
def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return np.log(q / (1.0 - q)).reshape(-1, 1)


def _fit_calibrator(p: np.ndarray, y: np.ndarray) -> tuple[str, Any]:
    """Isotonic when the validation set is large enough, otherwise Platt (logistic on the logit)."""
    if len(y) >= ISOTONIC_MIN_ROWS:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(p, y)
        return "isotonic", iso
    platt = LogisticRegression(C=1e4, max_iter=1000)
    platt.fit(_logit(p), y)
    return "platt", platt


def _apply_calibrator(method: str, calibrator: Any, p: np.ndarray) -> np.ndarray:
    if method == "isotonic":
        out = calibrator.predict(p)
    elif method == "platt":
        out = calibrator.predict_proba(_logit(p))[:, 1]
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return np.clip(np.asarray(out, dtype=np.float64), PD_CLIP, 1.0 - PD_CLIP)


# ---------------------------------------------------------------- rules
def score_from_pd(pd_: Any) -> np.ndarray:
    """PDO points for a PD on the house scale (:data:`SCALE`)."""
    return SCALE.score_from_pd(pd_)


def band_from_score(score: Any) -> np.ndarray:
    """Band letter per score, using :data:`BANDS`."""
    s = np.asarray(score, dtype=np.float64)
    out = np.full(s.shape, BANDS[-1][0], dtype=object)
    for name, lowest in reversed(BANDS[:-1]):
        out[s >= lowest] = name
    return out


def recommended_limit(
    pd_: Any,
    monthly_income: Any,
    requested: Any,
    *,
    income_multiple: float = 3.0,
    max_pd: float = 0.30,
    round_to: float = 10.0,
) -> np.ndarray:
    """A deliberately simple limit rule, easy to explain and to audit.

    limit = income_multiple × monthly_income × (1 - PD / max_pd), floored at 0,
    capped by the requested amount and rounded down to ``round_to``. A near-zero
    PD earns up to 3 months' income; the limit shrinks linearly with PD and
    reaches 0 at ``max_pd`` (30%). Missing income gives 0 (no basis to lend).
    """
    if income_multiple <= 0:
        raise ValueError(f"income_multiple must be > 0, got {income_multiple!r}")
    if not 0 < max_pd <= 1:
        raise ValueError(f"max_pd must be in (0, 1], got {max_pd!r}")
    if round_to <= 0:
        raise ValueError(f"round_to must be > 0, got {round_to!r}")
    p = np.asarray(pd_, dtype=np.float64)
    income = np.nan_to_num(np.asarray(monthly_income, dtype=np.float64), nan=0.0)
    req = np.asarray(requested, dtype=np.float64)
    raw = income_multiple * np.maximum(income, 0.0) * np.clip(1.0 - p / max_pd, 0.0, 1.0)
    capped = np.minimum(raw, np.maximum(req, 0.0))
    return np.floor(capped / round_to) * round_to


# ---------------------------------------------------------------- models
def _lgbm_name(name: str) -> str:
    """LightGBM rejects some characters in feature names; we map back by position anyway."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class CreditModels:
    """The trained champion and challenger, with everything needed to score a raw table."""

    booster: lgb.Booster
    calibrator: Any
    calibration_method: str
    scorecard: WoEScorecard
    scorecard_calibrator: Any
    scorecard_calibration_method: str
    feature_names: list[str]
    categorical: list[str]
    encoder: TabularEncoder | None = None
    best_iteration: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ inputs
    def frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """The model input both models read: float columns ``feature_names``
        (encoded first when an encoder is part of the bundle)."""
        return _model_frame(X, self.encoder, self.feature_names)

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        """:meth:`frame` as a float64 array (what the booster is given)."""
        return self.frame(X).to_numpy(dtype=np.float64)

    # ------------------------------------------------------------ predictions
    def predict_pd_uncalibrated(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's own probability (before calibration)."""
        return np.asarray(self.booster.predict(self.matrix(X)), dtype=np.float64)

    def predict_pd(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated PD from the LightGBM champion."""
        return _apply_calibrator(
            self.calibration_method, self.calibrator, self.predict_pd_uncalibrated(X)
        )

    def predict_pd_challenger(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated PD from the scorecard challenger."""
        raw = self.scorecard.predict_proba(self.frame(X))[:, 1]
        return _apply_calibrator(self.scorecard_calibration_method, self.scorecard_calibrator, raw)

    @staticmethod
    def score(pd_: Any) -> np.ndarray:
        """PDO points (600 at 50:1, 20 PDO); higher is better."""
        return score_from_pd(pd_)

    @staticmethod
    def band(score: Any) -> np.ndarray:
        """Band letters A (best) to E for scores, cut-offs in :data:`BANDS`."""
        return band_from_score(score)

    def reasons(self, X_row: pd.DataFrame, top: int = 4) -> list[dict[str, Any]]:
        """Champion reasons: the features pushing this applicant's PD up the most.

        From LightGBM's exact tree SHAP values (``pred_contrib``), in log-odds of
        default; only positive contributions are returned, largest first.
        """
        if not isinstance(X_row, pd.DataFrame) or len(X_row) != 1:
            raise ValueError("reasons expects a one-row DataFrame")
        contrib = np.asarray(self.booster.predict(self.matrix(X_row), pred_contrib=True))[0, :-1]
        order = sorted(range(len(contrib)), key=lambda j: (-contrib[j], self.feature_names[j]))
        out = []
        for j in order[:top]:
            if contrib[j] <= 0:
                break
            name = self.feature_names[j]
            value = X_row.iloc[0][name] if name in X_row.columns else None
            if value is not None and pd.isna(value):
                value = None
            out.append(
                {"feature": name, "value": _jsonable(value), "contribution": float(contrib[j])}
            )
        return out

    def reasons_challenger(self, X_row: pd.DataFrame, top: int = 4) -> list[dict[str, Any]]:
        """Scorecard reasons: features that cost most points against their best bin.

        Bins of encoded categorical columns are shown as the original level.
        """
        out = self.scorecard.reasons(self.frame(X_row), top=top)
        vocab = self.encoder.vocabulary_ if self.encoder is not None else {}
        for reason in out:
            levels = vocab.get(reason["feature"])
            if levels is not None:
                reason["bin"] = _decode_label(reason["bin"], levels)
        return out

    def points_table(self) -> pd.DataFrame:
        """The challenger's points table, categorical bins shown as original levels."""
        table = self.scorecard.points_table()
        vocab = self.encoder.vocabulary_ if self.encoder is not None else {}
        table["bin"] = [
            _decode_label(b, vocab[f]) if f in vocab else b
            for f, b in zip(table["feature"], table["bin"], strict=True)
        ]
        return table

    def top_features(self, n: int = 10) -> list[str]:
        """Champion features by total gain, largest first."""
        gain = self.booster.feature_importance(importance_type="gain")
        order = sorted(range(len(gain)), key=lambda j: (-gain[j], self.feature_names[j]))
        return [self.feature_names[j] for j in order[:n]]

    # ------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        """The contents of ``credit_meta.json``."""
        return _jsonable(
            {
                "format": _META_FORMAT,
                "feature_names": self.feature_names,
                "categorical": self.categorical,
                "encoder": self.encoder is not None,
                "dropped_protected": []
                if self.encoder is None
                else self.encoder.dropped_protected_,
                "best_iteration": self.best_iteration,
                "lightgbm_params": self.params,
                "calibration": {
                    "champion": self.calibration_method,
                    "challenger": self.scorecard_calibration_method,
                    "isotonic_min_rows": ISOTONIC_MIN_ROWS,
                    "pd_clip": PD_CLIP,
                },
                "score_scale": {
                    "pdo": SCALE.pdo,
                    "base_score": SCALE.base_score,
                    "base_odds": SCALE.base_odds,
                },
                "bands": [
                    {"band": b, "min_score": None if not np.isfinite(s) else s} for b, s in BANDS
                ],
                "scorecard_features": self.scorecard.features_,
                "metrics": self.metrics,
                "versions": {
                    "lightgbm": lgb.__version__,
                    "scikit-learn": sklearn.__version__,
                    "numpy": np.__version__,
                    "python": f"{sys.version_info.major}.{sys.version_info.minor}",
                },
            }
        )

    def save(self, directory: str | Path) -> list[str]:
        """Write the bundle files into ``directory`` (created if needed).

        Returns the file names written, relative to ``directory``. Nothing in
        them depends on time or machine, so equal models give equal bytes.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written: list[str] = []

        def text(name: str, content: str) -> None:
            (out / name).write_bytes(content.encode("utf-8"))
            written.append(name)

        text("credit_lgbm.txt", self.booster.model_to_string())
        joblib.dump(self.calibrator, out / "credit_calibrator.joblib")
        written.append("credit_calibrator.joblib")
        text("scorecard.json", self.scorecard.to_json() + "\n")
        joblib.dump(self.scorecard_calibrator, out / "scorecard_calibrator.joblib")
        written.append("scorecard_calibrator.joblib")
        if self.encoder is not None:
            text("encoder.json", self.encoder.to_json() + "\n")
        text("credit_meta.json", json.dumps(self.meta(), sort_keys=True, indent=2) + "\n")
        return written

    @classmethod
    def load(cls, directory: str | Path) -> CreditModels:
        """Rebuild from :meth:`save` output. Integrity (hashes) is the caller's job."""
        src = Path(directory)
        meta = json.loads((src / "credit_meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != _META_FORMAT:
            raise ValueError(f"{src}: not a {_META_FORMAT} bundle")
        saved_sklearn = meta["versions"]["scikit-learn"]
        if saved_sklearn != sklearn.__version__:
            warnings.warn(
                f"calibrators were saved with scikit-learn {saved_sklearn}, "
                f"running {sklearn.__version__}",
                UserWarning,
                stacklevel=2,
            )
        booster = lgb.Booster(model_str=(src / "credit_lgbm.txt").read_text(encoding="utf-8"))
        encoder = None
        if meta["encoder"]:
            encoder = TabularEncoder.from_json((src / "encoder.json").read_text(encoding="utf-8"))
        return cls(
            booster=booster,
            calibrator=joblib.load(src / "credit_calibrator.joblib"),
            calibration_method=meta["calibration"]["champion"],
            scorecard=WoEScorecard.from_json((src / "scorecard.json").read_text(encoding="utf-8")),
            scorecard_calibrator=joblib.load(src / "scorecard_calibrator.joblib"),
            scorecard_calibration_method=meta["calibration"]["challenger"],
            feature_names=list(meta["feature_names"]),
            categorical=list(meta["categorical"]),
            encoder=encoder,
            best_iteration=int(meta["best_iteration"]),
            params=dict(meta["lightgbm_params"]),
            metrics=dict(meta["metrics"]),
        )


def _model_frame(
    X: pd.DataFrame, encoder: TabularEncoder | None, feature_names: list[str]
) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError("X must be a pandas DataFrame")
    if encoder is not None:
        return encoder.transform(X)
    by_name = {str(c): c for c in X.columns}
    missing = [c for c in feature_names if c not in by_name]
    if missing:
        raise ValueError(f"X is missing model features: {missing}")
    cols = {c: pd.to_numeric(X[by_name[c]], errors="raise") for c in feature_names}
    return pd.DataFrame(cols, index=X.index).astype(np.float64)


def _decode_label(label: str, levels: list[str | float]) -> str:
    """'3.0' → the encoder's level 3; labels that are not codes are returned unchanged."""
    try:
        code = float(label)
    except ValueError:
        return label
    if code.is_integer() and 0 <= code < len(levels):
        return str(levels[int(code)])
    return label


def _is_code_column(series: pd.Series) -> bool:
    """Numeric with non-negative integer values: LightGBM can take it as categorical as is."""
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    v = series.dropna().to_numpy(dtype=np.float64)
    return bool(np.all(v >= 0) and np.all(v == np.floor(v)))


def _needs_encoder(X: pd.DataFrame, categorical: Sequence[str] | None) -> bool:
    """Text columns, protected/identifier columns, or categorical columns that are not
    already non-negative integer codes."""
    if wants_encoder(X):
        return True
    for c in categorical or ():
        if c not in X.columns:
            raise ValueError(f"categorical names a column not in X_train: {c!r}")
        if not _is_code_column(X[c]):
            return True
    return False


# ---------------------------------------------------------------- training
def _check_xy(X: Any, y: Any, name: str) -> np.ndarray:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X_{name} must be a pandas DataFrame")
    yy = np.asarray(y)
    if yy.shape != (len(X),):
        raise ValueError(f"y_{name} must have one value per row of X_{name}")
    if not np.isin(yy, (0, 1)).all():
        raise ValueError(f"y_{name} must contain only 0 and 1")
    if yy.min() == yy.max():
        raise ValueError(f"y_{name} must contain both classes")
    return yy.astype(np.int64)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[credit] {message}", file=sys.stderr, flush=True)


def train_credit_models(
    X_train: pd.DataFrame,
    y_train: Any,
    X_valid: pd.DataFrame,
    y_valid: Any,
    X_test: pd.DataFrame | None = None,
    y_test: Any = None,
    *,
    seed: int = 0,
    categorical: Sequence[str] | None = None,
    progress: bool = False,
    num_threads: int = 1,
    encoder: TabularEncoder | None = None,
) -> CreditModels:
    """Fit the LightGBM champion and the scorecard challenger, calibrate both on valid.

    ``X_*`` are raw tables. Pass ``encoder`` (fitted or not; e.g. with your own
    protected list) to use it; otherwise one is fitted on train when the table
    needs it: text columns, protected or identifier columns, or ``categorical``
    columns that are not non-negative integer codes. An all-numeric table is
    used as is (``categorical`` codes go to LightGBM as categories). Both
    models read the same (encoded) columns. Early stopping and calibration
    use the validation set. With a test set, :func:`evaluate_credit` on it
    (PSI against train) is stored in ``metrics["test"]``.
    """
    ytr = _check_xy(X_train, y_train, "train")
    yva = _check_xy(X_valid, y_valid, "valid")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
    if categorical is not None and isinstance(categorical, str):
        raise ValueError("categorical must be a sequence of column names, not a string")

    if encoder is None and _needs_encoder(X_train, categorical):
        encoder = TabularEncoder(categorical=list(categorical) if categorical else None)
    if encoder is not None:
        if not hasattr(encoder, "feature_names_"):
            encoder.fit(X_train)
        feature_names = list(encoder.feature_names_)
        cat_features = list(encoder.categorical_features_)
        _say(progress, f"encoder: dropped protected {encoder.dropped_protected_}")
    else:
        feature_names = [str(c) for c in X_train.columns]
        cat_features = [str(c) for c in categorical or ()]

    ftr = _model_frame(X_train, encoder, feature_names)
    fva = _model_frame(X_valid, encoder, feature_names)
    mtr, mva = ftr.to_numpy(dtype=np.float64), fva.to_numpy(dtype=np.float64)
    params = lgbm_params(seed=int(seed), num_threads=num_threads)
    lgb_names = [f"{_lgbm_name(n)}" for n in feature_names]
    cat_idx = [feature_names.index(c) for c in cat_features]
    dtrain = lgb.Dataset(
        mtr, label=ytr, feature_name=lgb_names, categorical_feature=cat_idx, free_raw_data=False
    )
    dvalid = lgb.Dataset(mva, label=yva, reference=dtrain)
    callbacks: list[Callable[..., Any]] = [
        lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)
    ]
    if progress:
        callbacks.append(lgb.log_evaluation(100))
    _say(progress, f"champion: {len(ytr)} train rows, {len(yva)} valid rows")
    trained = lgb.train(
        params, dtrain, num_boost_round=NUM_BOOST_ROUND, valid_sets=[dvalid], callbacks=callbacks
    )
    best = int(trained.best_iteration) or trained.current_iteration()
    # Round-trip through text now, so the in-memory model is exactly what load() returns.
    booster = lgb.Booster(model_str=trained.model_to_string(num_iteration=best))
    raw_valid = np.asarray(booster.predict(mva), dtype=np.float64)
    method, calibrator = _fit_calibrator(raw_valid, yva)

    _say(progress, "challenger: WoE scorecard")
    card = WoEScorecard(categorical=cat_features or None)
    card.fit(ftr, ytr)
    card_valid = card.predict_proba(fva)[:, 1]
    card_method, card_calibrator = _fit_calibrator(card_valid, yva)

    models = CreditModels(
        booster=booster,
        calibrator=calibrator,
        calibration_method=method,
        scorecard=card,
        scorecard_calibrator=card_calibrator,
        scorecard_calibration_method=card_method,
        feature_names=feature_names,
        categorical=cat_features,
        encoder=encoder,
        best_iteration=best,
        params=params,
    )
    metrics: dict[str, Any] = {
        "n_train": len(ytr),
        "n_valid": len(yva),
        "train_default_rate": float(ytr.mean()),
        "valid": {
            "champion_auc": ev.roc_auc(yva, models.predict_pd(X_valid)),
            "champion_auc_uncalibrated": ev.roc_auc(yva, raw_valid),
            "challenger_auc": ev.roc_auc(yva, models.predict_pd_challenger(X_valid)),
        },
        "scorecard_iv": card.iv_,
    }
    if X_test is not None:
        yte = _check_xy(X_test, y_test, "test")
        metrics["test"] = evaluate_credit(models, X_test, yte, X_ref=X_train)
    models.metrics = _jsonable(metrics)
    _say(progress, f"done: best iteration {best}, calibration {method}/{card_method}")
    return models


# ---------------------------------------------------------------- evaluation
def _safe(metric: Callable[[Any, Any], float], y: np.ndarray, p: np.ndarray) -> float | None:
    """A metric, or None when it is undefined for this sample (e.g. one class only)."""
    try:
        return float(metric(y, p))
    except ValueError:
        return None


def _by_band(y: np.ndarray, pd_: np.ndarray, bands: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for name, _ in BANDS:
        mask = bands == name
        n = int(mask.sum())
        rows.append(
            {
                "band": name,
                "n": n,
                "share": n / len(y) if len(y) else 0.0,
                "mean_pd": float(pd_[mask].mean()) if n else None,
                "default_rate": float(y[mask].mean()) if n else None,
            }
        )
    return rows


def evaluate_credit(
    models: CreditModels, X: pd.DataFrame, y: Any, X_ref: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Discrimination, calibration and stability of both models on (X, y).

    Per model: ROC-AUC, Gini, KS, average precision, Brier score, calibration
    by PD decile and, per score band, the mean predicted PD beside the observed
    default rate. With ``X_ref`` (the training period): PSI of each model's
    score and of the champion's ten most important features, reference → X.
    Metrics undefined for the sample (a single class) are None.
    """
    yy = np.asarray(y).astype(np.int64)
    if yy.shape != (len(X),):
        raise ValueError("y must have one value per row of X")
    out: dict[str, Any] = {"n": len(yy), "default_rate": float(yy.mean()) if len(yy) else None}
    preds = {"champion": models.predict_pd(X), "challenger": models.predict_pd_challenger(X)}
    for name, p in preds.items():
        scores = models.score(p)
        bands = models.band(scores)
        calib = ev.calibration_table(yy, p, bins=10)
        out[name] = {
            "roc_auc": _safe(ev.roc_auc, yy, p),
            "gini": _safe(ev.gini, yy, p),
            "ks": _safe(ev.ks_statistic, yy, p),
            "average_precision": _safe(ev.average_precision, yy, p),
            "brier": float(np.mean((p - yy) ** 2)),
            "mean_pd": float(p.mean()),
            "by_band": _by_band(yy, p, bands),
            "calibration_deciles": calib[["n", "mean_predicted", "observed_rate"]].to_dict(
                orient="records"
            ),
        }
    if X_ref is not None:
        ref = {
            "champion": models.predict_pd(X_ref),
            "challenger": models.predict_pd_challenger(X_ref),
        }
        stability: dict[str, Any] = {
            f"{name}_score": ev.psi(models.score(ref[name]), models.score(preds[name]))
            for name in preds
        }
        m_ref, m_now = models.matrix(X_ref), models.matrix(X)
        features = {}
        for feat in models.top_features(10):
            j = models.feature_names.index(feat)
            features[feat] = ev.psi(
                m_ref[:, j], m_now[:, j], categorical=feat in models.categorical
            )
        stability["features"] = features
        out["psi"] = stability
    return _jsonable(out)


def cross_validate_credit(
    X: pd.DataFrame,
    y: Any,
    folds: int = 5,
    seed: int = 0,
    *,
    categorical: Sequence[str] | None = None,
    valid_size: float = 0.2,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Stratified k-fold ROC-AUC of both models, each fold trained by :func:`train_credit_models`
    with an inner stratified validation split (``valid_size`` of the training folds).

    For tables without timestamps, to compare with literature figures (German
    LR ≈ 0.79; Taiwan LR ≈ 0.72, GBM ≈ 0.78).
    """
    yy = _check_xy(X, y, "cv")
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if not 0.0 < valid_size < 0.5:
        raise ValueError(f"valid_size must be in (0, 0.5), got {valid_size!r}")
    res: dict[str, list[float]] = {
        "champion_auc": [],
        "champion_auc_uncalibrated": [],
        "challenger_auc": [],
    }
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit_idx, test_idx) in enumerate(splitter.split(np.zeros(len(yy)), yy)):
        tr_idx, va_idx = train_test_split(
            fit_idx, test_size=valid_size, stratify=yy[fit_idx], random_state=seed + k
        )
        models = train_credit_models(
            X.iloc[tr_idx],
            yy[tr_idx],
            X.iloc[va_idx],
            yy[va_idx],
            seed=seed,
            categorical=categorical,
            num_threads=num_threads,
        )
        X_te, y_te = X.iloc[test_idx], yy[test_idx]
        res["champion_auc"].append(ev.roc_auc(y_te, models.predict_pd(X_te)))
        res["champion_auc_uncalibrated"].append(
            ev.roc_auc(y_te, models.predict_pd_uncalibrated(X_te))
        )
        res["challenger_auc"].append(ev.roc_auc(y_te, models.predict_pd_challenger(X_te)))
    summary: dict[str, Any] = {"folds": folds, "seed": seed, "n": len(yy)}
    for key, values in res.items():
        summary[key] = values
        summary[f"{key}_mean"] = float(np.mean(values))
        summary[f"{key}_std"] = float(np.std(values))
    return summary


# ---------------------------------------------------------------- fairness
def group_rates(
    df: pd.DataFrame, group_col: str, approved: str | Any, defaulted: str | Any
) -> pd.DataFrame:
    """Approval and default rates per group of a (protected) attribute.

    ``approved`` / ``defaulted`` are column names of ``df`` or arrays aligned
    with it; ``defaulted`` may be NaN where the outcome is unknown (declined
    applicants). Columns: ``n``, ``approval_rate``, ``default_rate_approved``
    (among approved with a known outcome), ``default_rate_all`` (all rows with
    a known outcome) and ``approval_ratio`` = approval rate / the highest
    group's approval rate (the "four-fifths rule" adverse-impact ratio; below
    0.8 deserves a look).
    """
    if group_col not in df.columns:
        raise ValueError(f"group_col {group_col!r} is not a column of df")

    def column(value: str | Any, name: str) -> np.ndarray:
        arr = df[value].to_numpy() if isinstance(value, str) else np.asarray(value)
        if arr.shape != (len(df),):
            raise ValueError(f"{name} must have one value per row of df")
        return arr.astype(np.float64)

    frame = pd.DataFrame(
        {
            "group": df[group_col].to_numpy(),
            "approved": column(approved, "approved"),
            "defaulted": column(defaulted, "defaulted"),
        }
    )
    frame["defaulted_approved"] = frame["defaulted"].where(frame["approved"] == 1)
    out = frame.groupby("group", sort=True, dropna=False).agg(
        n=("approved", "size"),
        approval_rate=("approved", "mean"),
        default_rate_approved=("defaulted_approved", "mean"),
        default_rate_all=("defaulted", "mean"),
    )
    best = out["approval_rate"].max()
    out["approval_ratio"] = out["approval_rate"] / best if best > 0 else np.nan
    out.index.name = group_col
    return out
