"""Encoding "bring your own" application tables into a numeric feature matrix.

`TabularEncoder` is the one place where a user's table becomes model input:
numbers stay numbers, text/category columns become integer codes from a stored
vocabulary, and protected attributes (sex, marital status, ...) are dropped so
no model can learn from them. It is saved as JSON inside a model bundle, so
serving rebuilds exactly the same columns without unpickling anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_EXCLUDED",
    "DEFAULT_PROTECTED",
    "GERMAN_COLUMNS",
    "TabularEncoder",
    "load_application_table",
    "load_german",
    "load_taiwan",
    "normalise_name",
    "wants_encoder",
]

DEFAULT_PROTECTED: tuple[str, ...] = (
    "sex",
    "gender",
    "marital_status",
    "marriage",
    "personal_status",
    "personal_status_sex",
    "personal_status_and_sex",
)
"""Column names (after :func:`normalise_name`) never used as features by default.

Exact matches, not substrings, so ``gender`` is dropped but ``sex_offender_check``
would not be; pass your own list to change it. Taiwan's ``SEX``/``MARRIAGE`` and
German attribute 9 (``personal_status_sex``, codes A91-A95, sex mixed with
marital status) are covered.
"""

DEFAULT_EXCLUDED: tuple[str, ...] = ("id",)
"""Identifier columns dropped by default: a row id carries no signal, only leakage."""

GERMAN_COLUMNS: tuple[str, ...] = (
    "checking_status",
    "duration_months",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "employment_since",
    "installment_rate_pct",
    "personal_status_sex",
    "other_debtors",
    "residence_since",
    "property",
    "age_years",
    "other_installment_plans",
    "housing",
    "existing_credits",
    "job",
    "num_dependents",
    "telephone",
    "foreign_worker",
)
"""Readable names for the 20 attributes of UCI german.data, in file order (see german.doc)."""

_ENCODER_FORMAT = "tabular-encoder/1"


def normalise_name(name: object) -> str:
    """Lower-case, non-alphanumeric runs → one underscore ("Marital Status" → "marital_status")."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _level_key(value: str | float) -> tuple[int, float, str]:
    """Sort numbers (numerically) before strings (lexically)."""
    if isinstance(value, str):
        return (1, 0.0, value)
    return (0, float(value), "")


def _scalar(value: Any) -> str | float:
    """A JSON-friendly vocabulary entry: numbers as float, everything else as str."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return str(value)


class TabularEncoder:
    """Numeric columns → float; text/category columns → integer codes; protected columns dropped.

    Parameters
    ----------
    protected:
        Column names (case-insensitive, see :func:`normalise_name`) that must not
        become features. Dropped and listed in ``dropped_protected_``.
    exclude:
        Other columns to drop (identifiers); listed in ``dropped_excluded_``.
    categorical:
        Extra columns to encode as categories even though they are numeric
        (e.g. Taiwan's ``EDUCATION``). Text, category and bool columns are
        always categorical.
    categorical_max_levels:
        Keep at most this many levels per categorical column (the most frequent;
        ties by value). Levels beyond that, values never seen at fit and missing
        values all become NaN: a level too rare to learn from is treated like an
        unknown one, and the models handle NaN as "missing".

    Learned attributes: ``feature_names_`` (output columns, input order),
    ``categorical_features_``, ``vocabulary_`` (column → sorted list of levels;
    the code is the position), ``n_levels_seen_``, ``dropped_protected_``,
    ``dropped_excluded_``.
    """

    def __init__(
        self,
        protected: Sequence[str] = DEFAULT_PROTECTED,
        exclude: Sequence[str] = DEFAULT_EXCLUDED,
        categorical: Sequence[str] | None = None,
        categorical_max_levels: int = 50,
    ) -> None:
        self.protected = protected
        self.exclude = exclude
        self.categorical = categorical
        self.categorical_max_levels = categorical_max_levels

    # ------------------------------------------------------------------ fit
    def _validate_params(self) -> None:
        if isinstance(self.protected, str) or not all(isinstance(p, str) for p in self.protected):
            raise ValueError("protected must be a sequence of column names (str)")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise ValueError("exclude must be a sequence of column names (str)")
        if not isinstance(self.categorical_max_levels, int) or self.categorical_max_levels < 1:
            raise ValueError(
                f"categorical_max_levels must be an int >= 1, got {self.categorical_max_levels!r}"
            )

    def fit(self, X: pd.DataFrame, y: Any = None) -> TabularEncoder:
        """Learn which columns to keep and the vocabulary of each categorical one."""
        self._validate_params()
        if not isinstance(X, pd.DataFrame):
            raise TypeError("TabularEncoder.fit expects a pandas DataFrame")
        protected = {normalise_name(p) for p in self.protected}
        excluded = {normalise_name(p) for p in self.exclude}
        forced = {str(c) for c in (self.categorical or ())}
        unknown = forced - {str(c) for c in X.columns}
        if unknown:
            raise ValueError(f"categorical names columns not in X: {sorted(unknown)}")
        self.dropped_protected_: list[str] = []
        self.dropped_excluded_: list[str] = []
        self.feature_names_: list[str] = []
        self.categorical_features_: list[str] = []
        self.vocabulary_: dict[str, list[str | float]] = {}
        self.n_levels_seen_: dict[str, int] = {}
        for col in X.columns:
            name, key = str(col), normalise_name(col)
            if key in protected:
                self.dropped_protected_.append(name)
                continue
            if key in excluded:
                self.dropped_excluded_.append(name)
                continue
            self.feature_names_.append(name)
            series = X[col]
            if name in forced or _is_categorical(series):
                self._fit_levels(name, series)
        self.n_features_in_ = X.shape[1]
        return self

    def _fit_levels(self, name: str, series: pd.Series) -> None:
        counts = series.dropna().map(_scalar).value_counts(sort=False)
        pairs: list[tuple[str | float, int]] = [(_scalar(k), int(v)) for k, v in counts.items()]
        # most frequent first, ties by value, so the vocabulary is deterministic
        ranked = sorted(pairs, key=lambda kv: (-kv[1], _level_key(kv[0])))
        kept = [level for level, _ in ranked[: self.categorical_max_levels]]
        self.categorical_features_.append(name)
        self.vocabulary_[name] = sorted(kept, key=_level_key)
        self.n_levels_seen_[name] = len(ranked)

    @property
    def dropped_(self) -> list[str]:
        """Alias of ``dropped_protected_`` (the columns a fairness report should group by)."""
        return self.dropped_protected_

    @property
    def categorical_(self) -> list[str]:
        """Alias of ``categorical_features_``."""
        return self.categorical_features_

    # ------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("TabularEncoder is not fitted; call fit first")

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The float64 feature matrix in ``feature_names_`` order; extra columns are ignored."""
        self._check_fitted()
        if not isinstance(X, pd.DataFrame):
            raise TypeError("TabularEncoder.transform expects a pandas DataFrame")
        by_name = {str(c): c for c in X.columns}
        missing = [c for c in self.feature_names_ if c not in by_name]
        if missing:
            raise ValueError(f"X is missing columns the encoder was fitted on: {missing}")
        out: dict[str, np.ndarray] = {}
        for name in self.feature_names_:
            series = X[by_name[name]]
            if name in self.vocabulary_:
                out[name] = self._codes(name, series)
            else:
                out[name] = pd.to_numeric(series, errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
        return pd.DataFrame(out, index=X.index, columns=self.feature_names_)

    def _codes(self, name: str, series: pd.Series) -> np.ndarray:
        vocab = self.vocabulary_[name]
        if (
            vocab
            and all(isinstance(v, str) for v in vocab)
            and pd.api.types.is_numeric_dtype(series)
            and series.notna().any()
        ):
            # every value would silently become NaN: most likely an already-encoded table
            raise ValueError(
                f"column {name!r} holds numbers but the encoder learned text levels; "
                "pass the raw table (is it already encoded?)"
            )
        lookup = {v: float(i) for i, v in enumerate(vocab)}
        codes = np.full(len(series), np.nan)
        notna = series.notna().to_numpy()
        if notna.any():
            mapped = series[notna].map(_scalar).map(lookup)
            codes[notna] = mapped.to_numpy(dtype=np.float64, na_value=np.nan)
        return codes

    def fit_transform(self, X: pd.DataFrame, y: Any = None) -> pd.DataFrame:
        """``fit(X).transform(X)``."""
        return self.fit(X, y).transform(X)

    # ------------------------------------------------------------- persist
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the encoder, as plain JSON types."""
        self._check_fitted()
        return {
            "format": _ENCODER_FORMAT,
            "params": {
                "protected": list(self.protected),
                "exclude": list(self.exclude),
                "categorical": None if self.categorical is None else list(self.categorical),
                "categorical_max_levels": self.categorical_max_levels,
            },
            "feature_names": self.feature_names_,
            "categorical_features": self.categorical_features_,
            "vocabulary": self.vocabulary_,
            "n_levels_seen": self.n_levels_seen_,
            "dropped_protected": self.dropped_protected_,
            "dropped_excluded": self.dropped_excluded_,
            "n_features_in": self.n_features_in_,
        }

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys) so equal encoders give byte-identical files."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularEncoder:
        """Rebuild a fitted encoder from :meth:`to_dict` output."""
        if data.get("format") != _ENCODER_FORMAT:
            raise ValueError(f"not a {_ENCODER_FORMAT} document: format={data.get('format')!r}")
        params = data["params"]
        enc = cls(
            protected=tuple(params["protected"]),
            exclude=tuple(params["exclude"]),
            categorical=None if params["categorical"] is None else tuple(params["categorical"]),
            categorical_max_levels=int(params["categorical_max_levels"]),
        )
        enc.feature_names_ = list(data["feature_names"])
        enc.categorical_features_ = list(data["categorical_features"])
        enc.vocabulary_ = {k: list(v) for k, v in data["vocabulary"].items()}
        enc.n_levels_seen_ = {k: int(v) for k, v in data["n_levels_seen"].items()}
        enc.dropped_protected_ = list(data["dropped_protected"])
        enc.dropped_excluded_ = list(data["dropped_excluded"])
        enc.n_features_in_ = int(data["n_features_in"])
        return enc

    @classmethod
    def from_json(cls, text: str) -> TabularEncoder:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def wants_encoder(
    X: pd.DataFrame,
    categorical: Iterable[str] | None = None,
    protected: Sequence[str] = DEFAULT_PROTECTED,
    exclude: Sequence[str] = DEFAULT_EXCLUDED,
) -> bool:
    """True when ``X`` cannot go to a model as is: text columns, forced categoricals,
    or protected/identifier columns to drop."""
    if categorical:
        return True
    names = {normalise_name(p) for p in (*protected, *exclude)}
    return any(normalise_name(c) in names or _is_categorical(X[c]) for c in X.columns)


# ----------------------------------------------------------------- loaders
def load_application_table(path: str | Path) -> pd.DataFrame:
    """Read a user's application table from CSV (optionally gzipped) or Parquet, by file suffix."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if ".csv" in suffixes or ".txt" in suffixes:
        return pd.read_csv(p)
    raise ValueError(f"unsupported table format for {p.name!r}: use .csv, .csv.gz or .parquet")


def load_german(path: str | Path) -> pd.DataFrame:
    """UCI german.data (whitespace separated, no header) with readable column names.

    Attribute codes (A11, A43, ...) are kept as text: german.doc explains them.
    The target column ``defaulted`` is 1 for a bad credit (code 2), 0 for good.
    """
    frame = pd.read_csv(
        path, sep=r"\s+", header=None, names=[*GERMAN_COLUMNS, "class"], engine="python"
    )
    if frame.shape[1] != len(GERMAN_COLUMNS) + 1:
        raise ValueError(f"{path}: expected 21 columns, got {frame.shape[1]}")
    if not frame["class"].isin((1, 2)).all():
        raise ValueError(f"{path}: target column must be 1 (good) or 2 (bad)")
    frame["defaulted"] = (frame.pop("class") == 2).astype(np.int64)
    return frame


def load_taiwan(path: str | Path) -> pd.DataFrame:
    """UCI "default of credit card clients" CSV, target renamed to ``defaulted``.

    The ``ID`` column is kept (the encoder drops it by default), as are
    ``SEX`` and ``MARRIAGE`` (protected: dropped by the encoder, kept here for
    group reports).
    """
    frame = load_application_table(path)
    target = "default payment next month"
    if target not in frame.columns:
        raise ValueError(f"{path}: no {target!r} column")
    frame = frame.rename(columns={target: "defaulted"})
    frame["defaulted"] = frame["defaulted"].astype(np.int64)
    return frame
