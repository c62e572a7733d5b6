"""The credit model at inference time: calibrated probability of default, points, band, limit.

Loaded only from a verified bundle written by `training.credit.CreditModels.save`.
The service scores the LightGBM champion; the scorecard challenger stays for
reports and shadow scoring. Scores and reasons come from the compiled forest
(`risk_service.forest`, `risk_service.treeshap`): no LightGBM call, so no OpenMP threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np

from risk_service.bundles import VerifiedBundle
from risk_service.treeshap import compile_booster, shap_values

BOOSTER_FILE = "credit_lgbm.txt"
CALIBRATOR_FILE = "credit_calibrator.joblib"
META_FILE = "credit_meta.json"

# DOMAIN.md scaling: 600 points at 50:1 good:bad odds, 20 points to double the odds.
PDO, BASE_SCORE, BASE_ODDS = 20.0, 600.0, 50.0
FACTOR = PDO / math.log(2.0)
OFFSET = BASE_SCORE - FACTOR * math.log(BASE_ODDS)


def score_from_pd(pd_: float) -> float:
    """Scorecard points: OFFSET + FACTOR × ln(odds of good); higher is better."""
    p = min(max(float(pd_), 1e-6), 1.0 - 1e-6)
    return OFFSET + FACTOR * math.log((1.0 - p) / p)


def recommended_limit(
    pd_: float,
    monthly_income: float | None,
    requested: float,
    *,
    income_multiple: float = 3.0,
    max_pd: float = 0.30,
    round_to: float = 10.0,
) -> float:
    """income_multiple × income × (1 − PD/max_pd), capped at the request, rounded down to 10.

    The same rule as `training.credit.recommended_limit` (a test holds them equal).
    Missing income gives 0: there is no basis to lend.
    """
    income = 0.0 if monthly_income is None or monthly_income != monthly_income else monthly_income
    raw = income_multiple * max(income, 0.0) * min(max(1.0 - pd_ / max_pd, 0.0), 1.0)
    return math.floor(min(raw, max(requested, 0.0)) / round_to) * round_to


class CreditModel:
    """Calibrated PD and reasons for one verified credit bundle."""

    def __init__(self, bundle: VerifiedBundle) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.feature_names: list[str] = list(bundle.manifest["feature_names"])
        self.meta: dict[str, Any] = json.loads(bundle.path(META_FILE).read_text())
        self.booster = lgb.Booster(model_str=bundle.path(BOOSTER_FILE).read_text())
        # bit-identical scores and TreeSHAP, single-threaded
        self.forest, self.treeshap = compile_booster(self.booster, f"credit bundle {self.version}")
        # Verified before this point: the joblib file's hash matched the manifest.
        calibrator = joblib.load(bundle.path(CALIBRATOR_FILE))
        method = self.meta["calibration"]["champion"]
        self.pd_clip = float(self.meta["calibration"].get("pd_clip", 1e-4))
        if method == "isotonic":
            xs = np.asarray(calibrator.X_thresholds_, dtype=np.float64)
            ys = np.asarray(calibrator.y_thresholds_, dtype=np.float64)

            def isotonic(raw: np.ndarray) -> np.ndarray:
                return np.asarray(np.interp(raw, xs, ys), dtype=np.float64)

            self._calibrate: Callable[[np.ndarray], np.ndarray] = isotonic
        elif method == "platt":
            slope, intercept = float(calibrator.coef_[0][0]), float(calibrator.intercept_[0])

            def platt(raw: np.ndarray) -> np.ndarray:
                q = np.clip(raw, 1e-12, 1 - 1e-12)
                z = slope * np.log(q / (1 - q)) + intercept
                return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

            self._calibrate = platt
        else:
            raise ValueError(f"credit bundle {self.version}: unknown calibration {method!r}")
        self.bands: list[tuple[str, float]] = [
            (b["band"], -math.inf if b["min_score"] is None else float(b["min_score"]))
            for b in self.meta["bands"]
        ]

    def predict_pd(self, X: np.ndarray) -> np.ndarray:
        raw = self.forest.predict_proba(np.asarray(X, np.float64))
        return np.clip(self._calibrate(raw), self.pd_clip, 1.0 - self.pd_clip)

    def band(self, score: float) -> str:
        for name, lowest in self.bands:
            if score >= lowest:
                return name
        return self.bands[-1][0]

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions to the raw log-odds, (n, n_features), bias dropped."""
        return shap_values(self.treeshap, self.booster, X)
