"""A WoE-binned logistic-regression scorecard with PDO points scaling.

The classic credit scorecard: every feature is cut into a few bins, each bin
gets a weight of evidence (WoE), a logistic regression weighs the WoE columns,
and the result is rescaled into points so that a fixed number of points (PDO)
doubles the odds of good. It is the challenger to the gradient-boosted model
because every point can be read off a table and explained to an applicant.
Saved as JSON (no pickle).

Conventions: ``y`` = 1 for bad (default). WoE = ln(share of goods / share of
bads), so a higher WoE and more points mean a better applicant.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

__all__ = ["ScoreScale", "WoEScorecard"]

_SCORECARD_FORMAT = "woe-scorecard/1"
MISSING = "missing"
OTHER = "__other__"


@dataclass(frozen=True)
class ScoreScale:
    """PDO scaling: score = offset + factor × ln(odds of good), factor = PDO / ln 2.

    Defaults follow DOMAIN.md: 600 points at 50:1 good:bad odds, 20 points to
    double the odds.
    """

    pdo: float = 20.0
    base_score: float = 600.0
    base_odds: float = 50.0

    def __post_init__(self) -> None:
        if not self.pdo > 0:
            raise ValueError(f"pdo must be > 0, got {self.pdo!r}")
        if not self.base_odds > 0:
            raise ValueError(f"base_odds must be > 0, got {self.base_odds!r}")

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def score_from_log_odds(self, log_odds_good: Any) -> np.ndarray:
        """Points for ln(odds of good)."""
        return self.offset + self.factor * np.asarray(log_odds_good, dtype=np.float64)

    def score_from_pd(self, pd_: Any, clip: float = 1e-6) -> np.ndarray:
        """Points for a probability of default (clipped to [clip, 1-clip] to stay finite)."""
        p = np.clip(np.asarray(pd_, dtype=np.float64), clip, 1.0 - clip)
        return self.score_from_log_odds(np.log((1.0 - p) / p))

    def pd_from_score(self, score: Any) -> np.ndarray:
        """Inverse of :meth:`score_from_pd`."""
        log_odds = (np.asarray(score, dtype=np.float64) - self.offset) / self.factor
        return 1.0 / (1.0 + np.exp(log_odds))


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _level(value: Any) -> str | float:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return str(value)


def _level_key(value: str | float) -> tuple[int, float, str]:
    """Numbers (numerically) before strings (lexically)."""
    return (1, 0.0, value) if isinstance(value, str) else (0, float(value), "")


def _woe(good: np.ndarray, bad: np.ndarray, smoothing: float) -> np.ndarray:
    g = good + smoothing
    b = bad + smoothing
    return np.log((g / g.sum()) / (b / b.sum()))


def _smoothed_bad_rate(bad: np.ndarray, n: np.ndarray, prior: float) -> np.ndarray:
    return (bad + prior) / (n + 1.0)


class WoEScorecard:
    """Weight-of-evidence scorecard: binning → WoE → logistic regression → points.

    Parameters
    ----------
    max_bins:
        Most bins per numeric feature (the missing bin is extra).
    min_bin_frac:
        Smallest share of non-missing rows a bin (or a categorical level) may
        hold; smaller numeric bins merge with a neighbour, rarer levels merge
        into one ``__other__`` bin (unseen levels score as that bin, or WoE 0
        if there is none).
    monotonic:
        Merge adjacent numeric bins until the bad rate is monotone in the
        feature; keeps points explainable ("the longer the duration, the fewer
        points") at a small cost in fit.
    min_iv:
        Features with information value below this are left out (0.02 = useless).
    pdo, base_score, base_odds:
        Points scaling, see :class:`ScoreScale`.
    C:
        Inverse L2 strength of the logistic regression on WoE columns.
    smoothing:
        Pseudo-count added to goods and bads of each bin before the WoE.
    categorical:
        Numeric columns to bin per level (text/category columns always are).
    prebins:
        Quantile bins tried before merging.

    Learned attributes: ``bins_`` (feature → bin spec), ``iv_``,
    ``features_`` (used, in model order), ``coef_``, ``intercept_``,
    ``dropped_sign_`` (features removed because the regression gave them the
    wrong sign), ``feature_names_in_``.
    """

    def __init__(
        self,
        max_bins: int = 6,
        min_bin_frac: float = 0.05,
        monotonic: bool = True,
        min_iv: float = 0.02,
        pdo: float = 20.0,
        base_score: float = 600.0,
        base_odds: float = 50.0,
        C: float = 1.0,
        smoothing: float = 0.5,
        categorical: list[str] | tuple[str, ...] | None = None,
        prebins: int = 20,
    ) -> None:
        self.max_bins = max_bins
        self.min_bin_frac = min_bin_frac
        self.monotonic = monotonic
        self.min_iv = min_iv
        self.pdo = pdo
        self.base_score = base_score
        self.base_odds = base_odds
        self.C = C
        self.smoothing = smoothing
        self.categorical = categorical
        self.prebins = prebins

    # ------------------------------------------------------------ params
    def _validate_params(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        need(isinstance(self.max_bins, int) and self.max_bins >= 2, "max_bins", "an int >= 2")
        need(isinstance(self.prebins, int) and self.prebins >= 2, "prebins", "an int >= 2")
        need(0.0 <= self.min_bin_frac < 0.5, "min_bin_frac", "in [0, 0.5)")
        need(self.min_iv >= 0.0, "min_iv", ">= 0")
        need(self.C > 0.0, "C", "> 0")
        need(self.smoothing > 0.0, "smoothing", "> 0")
        need(isinstance(self.monotonic, bool), "monotonic", "a bool")
        ScoreScale(self.pdo, self.base_score, self.base_odds)

    @property
    def scale(self) -> ScoreScale:
        return ScoreScale(float(self.pdo), float(self.base_score), float(self.base_odds))

    # ------------------------------------------------------------ binning
    def _numeric_cuts(self, x: np.ndarray, y: np.ndarray) -> list[float]:
        distinct = np.unique(x)
        if distinct.size <= 1:
            return []
        if distinct.size <= self.prebins:
            cuts = distinct[1:]
        else:
            qs = np.quantile(x, np.linspace(0.0, 1.0, self.prebins + 1)[1:-1])
            cuts = np.unique(qs[qs > distinct[0]])
        cut_list = [float(c) for c in cuts]
        prior = float(y.mean())
        min_n = max(1.0, self.min_bin_frac * x.size)

        def stats(cs: list[float]) -> tuple[np.ndarray, np.ndarray]:
            idx = np.searchsorted(np.asarray(cs), x, side="right")
            n = np.bincount(idx, minlength=len(cs) + 1).astype(np.float64)
            bad = np.bincount(idx, weights=y, minlength=len(cs) + 1)
            return n, bad

        # 1. no bin smaller than min_bin_frac: merge the smallest into its smaller neighbour
        while cut_list:
            n, _ = stats(cut_list)
            i = int(np.argmin(n))
            if n[i] >= min_n:
                break
            if i == 0:
                j = 0
            elif i == len(n) - 1:
                j = i - 1
            else:
                j = i - 1 if n[i - 1] <= n[i + 1] else i
            del cut_list[j]  # cut j separates bins j and j+1
        # 2. monotone bad rate: merge the first adjacent pair going the wrong way
        if self.monotonic and len(cut_list) > 0:
            n, bad = stats(cut_list)
            rate = _smoothed_bad_rate(bad, n, prior)
            slope = np.polyfit(np.arange(rate.size), rate, 1, w=np.sqrt(n))[0]
            direction = 1.0 if slope >= 0 else -1.0
            while cut_list:
                n, bad = stats(cut_list)
                rate = _smoothed_bad_rate(bad, n, prior)
                wrong = np.flatnonzero(np.diff(rate) * direction < 0)
                if wrong.size == 0:
                    break
                del cut_list[int(wrong[0])]
        # 3. at most max_bins: merge the adjacent pair with the closest bad rates
        while len(cut_list) + 1 > self.max_bins:
            n, bad = stats(cut_list)
            rate = _smoothed_bad_rate(bad, n, prior)
            del cut_list[int(np.argmin(np.abs(np.diff(rate))))]
        return cut_list

    def _fit_feature(self, name: str, series: pd.Series, y: np.ndarray) -> dict[str, Any]:
        missing = series.isna().to_numpy()
        good_y = y[~missing]
        categorical = name in set(self.categorical or ()) or _is_categorical(series)
        spec: dict[str, Any] = {"type": "categorical" if categorical else "numeric"}
        if categorical:
            values = series[~missing].map(_level)
            counts = values.value_counts(sort=False)
            min_n = self.min_bin_frac * max(1, int((~missing).sum()))
            levels = sorted((_level(k) for k, c in counts.items() if c >= min_n), key=_level_key)
            rare = [k for k, c in counts.items() if c < min_n]
            labels: list[str] = [str(v) for v in levels]
            if rare:
                labels.append(OTHER)
            lookup = {v: i for i, v in enumerate(levels)}
            other = len(levels)
            idx = values.map(lambda v: lookup.get(v, other)).to_numpy(dtype=np.int64)
            spec["levels"] = levels
            spec["has_other"] = bool(rare)
        else:
            x = series[~missing].to_numpy(dtype=np.float64)
            cuts = self._numeric_cuts(x, good_y) if x.size else []
            spec["cuts"] = cuts
            edges = [-math.inf, *cuts, math.inf]
            labels = [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in itertools.pairwise(edges)]
            idx = np.searchsorted(np.asarray(cuts), x, side="right")
        n_bins = len(labels)
        has_missing = bool(missing.any())
        bad = np.bincount(idx, weights=good_y, minlength=n_bins)
        total = np.bincount(idx, minlength=n_bins).astype(np.float64)
        if has_missing:
            labels.append(MISSING)
            bad = np.r_[bad, y[missing].sum()]
            total = np.r_[total, missing.sum()]
        good = total - bad
        woe = _woe(good, bad, self.smoothing)
        dg = (good + self.smoothing) / (good + self.smoothing).sum()
        db = (bad + self.smoothing) / (bad + self.smoothing).sum()
        spec.update(
            {
                "labels": labels,
                "woe": [float(w) for w in woe],
                "count": [int(c) for c in total],
                "bad": [int(b) for b in bad],
                "has_missing": has_missing,
                "iv": float(np.sum((dg - db) * woe)),
            }
        )
        return spec

    # ------------------------------------------------------------ woe
    @staticmethod
    def _bin_index(spec: dict[str, Any], series: pd.Series) -> np.ndarray:
        """Bin position per row; -1 means "no bin" (scores WoE 0)."""
        missing = series.isna().to_numpy()
        idx = np.full(len(series), -1, dtype=np.int64)
        n_regular = len(spec["labels"]) - (1 if spec["has_missing"] else 0)
        if spec["type"] == "categorical":
            lookup = {v: i for i, v in enumerate(spec["levels"])}
            unseen = len(spec["levels"]) if spec["has_other"] else -1
            vals = series[~missing].map(_level)
            idx[~missing] = vals.map(lambda v: lookup.get(v, unseen)).to_numpy(dtype=np.int64)
        else:
            x = pd.to_numeric(series[~missing], errors="coerce").to_numpy(dtype=np.float64)
            pos = np.searchsorted(np.asarray(spec["cuts"], dtype=np.float64), x, side="right")
            pos[np.isnan(x)] = -1
            idx[~missing] = pos
        if spec["has_missing"]:
            idx[missing] = n_regular
        return idx

    def _woe_matrix(self, X: pd.DataFrame, features: list[str]) -> np.ndarray:
        out = np.zeros((len(X), len(features)))
        for j, name in enumerate(features):
            spec = self.bins_[name]
            idx = self._bin_index(spec, X[name])
            woe = np.r_[np.asarray(spec["woe"], dtype=np.float64), 0.0]  # idx -1 → 0
            out[:, j] = woe[idx]
        return out

    # ------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, y: Any) -> WoEScorecard:
        """Bin every column, keep those with IV ≥ ``min_iv``, fit the regression."""
        self._validate_params()
        if not isinstance(X, pd.DataFrame):
            raise TypeError("WoEScorecard.fit expects a pandas DataFrame")
        yy = np.asarray(y)
        if yy.shape != (len(X),) or not np.isin(yy, (0, 1)).all():
            raise ValueError("y must be a 0/1 vector with one entry per row of X")
        if yy.min() == yy.max():
            raise ValueError("y must contain both classes")
        yy = yy.astype(np.float64)
        self.feature_names_in_ = [str(c) for c in X.columns]
        X = X.set_axis(self.feature_names_in_, axis=1)
        self.bins_: dict[str, dict[str, Any]] = {
            name: self._fit_feature(name, X[name], yy) for name in self.feature_names_in_
        }
        self.iv_ = {name: spec["iv"] for name, spec in self.bins_.items()}
        ranked = sorted(self.iv_, key=lambda k: (-self.iv_[k], k))
        features = [f for f in self.feature_names_in_ if self.iv_[f] >= self.min_iv]
        if not features:  # keep the best one rather than fit an empty model
            features = ranked[:1]
        self.dropped_sign_: list[str] = []
        while True:
            model = LogisticRegression(C=self.C, max_iter=2000)
            model.fit(self._woe_matrix(X, features), yy)
            coef = model.coef_[0]
            # y = bad, WoE = ln(good/bad): a sensible feature has a negative coefficient
            wrong = [f for f, c in zip(features, coef, strict=True) if c > 0]
            if not wrong or len(features) == 1:
                break
            worst = features[int(np.argmax(coef))]
            self.dropped_sign_.append(worst)
            features = [f for f in features if f != worst]
        self.features_ = features
        self.coef_ = [float(c) for c in coef]
        self.intercept_ = float(model.intercept_[0])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "features_"):
            raise RuntimeError("WoEScorecard is not fitted; call fit first")

    def _frame(self, X: Any) -> pd.DataFrame:
        if isinstance(X, pd.Series):
            X = X.to_frame().T
        elif isinstance(X, dict):
            X = pd.DataFrame([X])
        if not isinstance(X, pd.DataFrame):
            raise TypeError("X must be a DataFrame, a Series (one row) or a dict (one row)")
        X = X.set_axis([str(c) for c in X.columns], axis=1)
        missing = [f for f in self.features_ if f not in X.columns]
        if missing:
            raise ValueError(f"X is missing scorecard features: {missing}")
        return X

    # ------------------------------------------------------------ predict
    def decision_function(self, X: Any) -> np.ndarray:
        """ln(odds of bad) from the regression on WoE."""
        self._check_fitted()
        frame = self._frame(X)
        w = self._woe_matrix(frame, self.features_)
        return self.intercept_ + w @ np.asarray(self.coef_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Columns (P(good), P(bad)), as scikit-learn classifiers do."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def score(self, X: Any) -> np.ndarray:
        """Scorecard points (higher = better), equal to the sum of the row's points in
        :meth:`points_table`."""
        return self.scale.score_from_log_odds(-self.decision_function(X))

    def points_table(self) -> pd.DataFrame:
        """One row per (feature, bin): WoE, count, bad rate, points.

        Points = -factor × (coef × WoE + intercept / n_features) + offset / n_features,
        so a row's total equals :meth:`score`. Missing values fall in the
        ``missing`` bin when training had any, otherwise they score 0 points
        above the shared base (WoE 0).
        """
        self._check_fitted()
        scale = self.scale
        n = len(self.features_)
        base = (scale.offset - scale.factor * self.intercept_) / n
        rows = []
        for name, coef in zip(self.features_, self.coef_, strict=True):
            spec = self.bins_[name]
            for label, woe, count, bad in zip(
                spec["labels"], spec["woe"], spec["count"], spec["bad"], strict=True
            ):
                rows.append(
                    {
                        "feature": name,
                        "bin": label,
                        "woe": woe,
                        "count": count,
                        "bad_rate": bad / count if count else math.nan,
                        "points": base - scale.factor * coef * woe,
                    }
                )
        return pd.DataFrame(rows)

    def reasons(self, X_row: Any, top: int = 4) -> list[dict[str, Any]]:
        """Adverse-action reasons: the features where the applicant lost most points
        against that feature's best bin. Features that cost nothing are omitted."""
        self._check_fitted()
        frame = self._frame(X_row)
        if len(frame) != 1:
            raise ValueError(f"reasons expects one row, got {len(frame)}")
        scale = self.scale
        out: list[dict[str, Any]] = []
        for name, coef in zip(self.features_, self.coef_, strict=True):
            spec = self.bins_[name]
            woe = np.asarray(spec["woe"], dtype=np.float64)
            pts = -scale.factor * coef * woe
            idx = int(self._bin_index(spec, frame[name])[0])
            own = 0.0 if idx < 0 else float(pts[idx])
            lost = float(pts.max() - own)
            if lost > 1e-9:
                label = "unseen" if idx < 0 else spec["labels"][idx]
                out.append({"feature": name, "bin": label, "points_lost": lost})
        out.sort(key=lambda r: (-r["points_lost"], r["feature"]))
        return out[:top]

    # ------------------------------------------------------------ persist
    def to_dict(self) -> dict[str, Any]:
        """Parameters and learned state as plain JSON types."""
        self._check_fitted()
        return {
            "format": _SCORECARD_FORMAT,
            "params": {
                "max_bins": self.max_bins,
                "min_bin_frac": self.min_bin_frac,
                "monotonic": self.monotonic,
                "min_iv": self.min_iv,
                "pdo": self.pdo,
                "base_score": self.base_score,
                "base_odds": self.base_odds,
                "C": self.C,
                "smoothing": self.smoothing,
                "categorical": None if self.categorical is None else list(self.categorical),
                "prebins": self.prebins,
            },
            "feature_names_in": self.feature_names_in_,
            "bins": self.bins_,
            "iv": self.iv_,
            "features": self.features_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "dropped_sign": self.dropped_sign_,
        }

    def to_json(self) -> str:
        """Deterministic JSON; floats keep full precision so a round trip predicts identically."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WoEScorecard:
        if data.get("format") != _SCORECARD_FORMAT:
            raise ValueError(f"not a {_SCORECARD_FORMAT} document: format={data.get('format')!r}")
        params = dict(data["params"])
        if params["categorical"] is not None:
            params["categorical"] = list(params["categorical"])
        card = cls(**params)
        card.feature_names_in_ = list(data["feature_names_in"])
        card.bins_ = {k: dict(v) for k, v in data["bins"].items()}
        card.iv_ = {k: float(v) for k, v in data["iv"].items()}
        card.features_ = list(data["features"])
        card.coef_ = [float(c) for c in data["coef"]]
        card.intercept_ = float(data["intercept"])
        card.dropped_sign_ = list(data["dropped_sign"])
        return card

    @classmethod
    def from_json(cls, text: str) -> WoEScorecard:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    return f"{x:g}"
