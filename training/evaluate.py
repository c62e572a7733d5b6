"""Evaluation metrics shared by training reports and backtests.

Pure functions on numpy arrays (pandas only where a table is the natural
answer). Conventions, so that every report agrees:

* ``y`` is 1 for the bad outcome (fraud, default) and 0 otherwise.
* ``score`` / ``p``: higher means riskier.
* Metrics that are undefined for the data given (AUC with one class, recall
  with no positives, ...) raise ``ValueError`` with a message saying why; they
  never return a silently wrong number. The exceptions are per-bin/per-day
  tables, where an empty group shows ``NaN``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "amount_weighted_recall",
    "average_precision",
    "calibration_table",
    "card_precision_at_k",
    "expected_cost_curve",
    "gini",
    "information_value",
    "ks_statistic",
    "linear_cost",
    "psi",
    "recall_at_fpr",
    "roc_auc",
    "threshold_at_fpr",
]

PSI_EPSILON = 1e-4
"""Floor for a bin's share in :func:`psi`, so an empty bin costs a finite amount."""


def _binary(y: Any, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(np.int8)


def _scores(score: Any, n: int, name: str = "score") -> np.ndarray:
    arr = np.asarray(score, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"{what} is undefined when y has a single class ({n_pos} of {y.size})")


def roc_auc(y: Any, score: Any) -> float:
    """ROC-AUC as the Mann-Whitney probability P(score_bad > score_good), ties counting 1/2.

    Raises ``ValueError`` when ``y`` has only one class.
    """
    yy = _binary(y)
    s = _scores(score, yy.size)
    _both_classes(yy, "ROC-AUC")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    n_pos = float(yy.sum())
    n_neg = float(yy.size - n_pos)
    u = ranks[yy == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def gini(y: Any, score: Any) -> float:
    """Gini (accuracy ratio) = 2 × AUC - 1, the figure credit teams quote."""
    return 2.0 * roc_auc(y, score) - 1.0


def average_precision(y: Any, score: Any) -> float:
    """Average precision (PR-AUC): sum over thresholds of precision × recall increment.

    Same step-wise definition as scikit-learn (no interpolation); tied scores
    form a single threshold. Raises ``ValueError`` when there are no positives.
    """
    yy = _binary(y)
    s = _scores(score, yy.size)
    n_pos = int(yy.sum())
    if n_pos == 0:
        raise ValueError("average precision is undefined without positives")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], yy[order]
    tp = np.cumsum(y_sorted)
    # last index of each run of tied scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tp_at = tp[last].astype(np.float64)
    precision = tp_at / (last + 1)
    recall = tp_at / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_fpr(y: Any, score: Any, fpr: float) -> float:
    """Lowest threshold t such that flagging ``score >= t`` keeps the FPR at or below ``fpr``.

    Chosen on the negatives only: at most ``floor(fpr × n_negatives)`` of them
    may score at or above t. Returns ``inf`` when even the top score would
    exceed the budget (nothing can be flagged) and ``-inf`` when all
    negatives fit in it. Raises ``ValueError`` without negatives.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    yy = _binary(y)
    s = _scores(score, yy.size)
    neg = np.sort(s[yy == 0])[::-1]
    if neg.size == 0:
        raise ValueError("threshold_at_fpr needs at least one negative")
    allowed = int(np.floor(fpr * neg.size + 1e-12))
    if allowed >= neg.size:
        return float("-inf")
    # strictly above the (allowed+1)-th highest negative score
    return float(np.nextafter(neg[allowed], np.inf))


def recall_at_fpr(y: Any, score: Any, fpr: float) -> float:
    """Recall of ``score >= t`` at the threshold from :func:`threshold_at_fpr`.

    The usual "how much fraud do we catch if we may bother 0.1% of good
    customers" figure. Raises ``ValueError`` without positives or negatives.
    """
    yy = _binary(y)
    s = _scores(score, yy.size)
    if yy.sum() == 0:
        raise ValueError("recall is undefined without positives")
    t = threshold_at_fpr(yy, s, fpr)
    return float(np.mean(s[yy == 1] >= t))


def amount_weighted_recall(y: Any, score: Any, amount: Any, threshold: float) -> float:
    """Share of the bad value (sum of ``amount`` over positives) flagged by ``score >= threshold``.

    Raises ``ValueError`` when the positives carry no amount.
    """
    yy = _binary(y)
    s = _scores(score, yy.size)
    a = _scores(amount, yy.size, "amount")
    if (a < 0).any():
        raise ValueError("amount must be non-negative")
    total = float(a[yy == 1].sum())
    if total <= 0:
        raise ValueError("amount-weighted recall is undefined: positives carry no amount")
    return float(a[(yy == 1) & (s >= threshold)].sum() / total)


def card_precision_at_k(
    days: Any, card_ids: Any, y: Any, score: Any, k: int = 100
) -> tuple[float, pd.Series]:
    """Card Precision@k: per day, the fraud share among the k cards an analyst would check.

    Each day every card gets its highest score that day; the k cards with the
    highest such score are taken (ties broken by card id, so it is
    deterministic) and the precision is the fraction of *those cards* with at
    least one fraud that day. A day with fewer than k cards divides by the
    number of cards it has. Returns the mean over days and the per-day Series.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    yy = _binary(y)
    s = _scores(score, yy.size)
    frame = pd.DataFrame({"day": np.asarray(days), "card": np.asarray(card_ids), "y": yy, "s": s})
    if len(frame) == 0:
        raise ValueError("card_precision_at_k needs at least one event")
    per_card = frame.groupby(["day", "card"], sort=True).agg(s=("s", "max"), y=("y", "max"))
    per_card = per_card.reset_index().sort_values(
        ["day", "s", "card"], ascending=[True, False, True], kind="mergesort"
    )
    top = per_card.groupby("day", sort=True).head(k)
    per_day = top.groupby("day", sort=True)["y"].mean().astype(np.float64)
    per_day.name = f"card_precision_at_{k}"
    return float(per_day.mean()), per_day


def ks_statistic(y: Any, score: Any) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of bads and goods.

    Evaluated at every distinct score, so ties are handled exactly. Raises
    ``ValueError`` when ``y`` has a single class.
    """
    yy = _binary(y)
    s = _scores(score, yy.size)
    _both_classes(yy, "KS")
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], yy[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    cdf_bad = np.cumsum(y_sorted)[last] / yy.sum()
    cdf_good = np.cumsum(1 - y_sorted)[last] / (yy.size - yy.sum())
    return float(np.max(np.abs(cdf_bad - cdf_good)))


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the quantiles of ``values`` (duplicates removed)."""
    qs = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


def psi(expected: Any, actual: Any, bins: int = 10, categorical: bool = False) -> float:
    """Population stability index of ``actual`` against ``expected`` (e.g. train vs later period).

    Bins are the quantiles of ``expected`` (a value equal to a cut point goes
    to the upper bin), or one bin per distinct value when ``categorical``;
    missing values (NaN) form their own bin. Each share is floored at
    ``PSI_EPSILON`` so empty bins give a large but finite term.
    PSI = Σ (a - e) × ln(a / e). Below 0.1 stable, 0.1-0.25 look, above 0.25 shift.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    if e.size == 0 or a.size == 0:
        raise ValueError("psi needs non-empty expected and actual samples")
    e_ok, a_ok = ~np.isnan(e), ~np.isnan(a)
    if not e_ok.any():
        raise ValueError("psi: expected sample is all missing")
    if categorical:
        levels = np.unique(np.r_[e[e_ok], a[a_ok]])
        # cut just above each level but the last: every level gets its own bin
        edges = np.nextafter(levels[:-1], np.inf)
    else:
        edges = _quantile_edges(e[e_ok], bins)
    n_bins = edges.size + 1

    def shares(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, x[ok], side="right"), minlength=n_bins)
        counts = np.r_[counts, (~ok).sum()]
        return np.maximum(counts / x.size, PSI_EPSILON)

    pe, pa = shares(e, e_ok), shares(a, a_ok)
    if not (~e_ok).any() and not (~a_ok).any():
        pe, pa = pe[:-1], pa[:-1]
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def information_value(x: Any, y: Any, bins: int = 10, smoothing: float = 0.5) -> float:
    """Information value of one feature for a binary target.

    Numeric ``x``: quantile bins; object/category ``x``: one bin per level;
    missing values: their own bin. WoE = ln(share of goods / share of bads)
    with ``smoothing`` added to every bin's counts (so a pure bin stays
    finite); IV = Σ (share_good - share_bad) × WoE. Reading (DOMAIN.md):
    < 0.02 useless, 0.02-0.1 weak, 0.1-0.3 medium, > 0.3 strong, > 0.5 suspicious.
    """
    yy = _binary(y)
    _both_classes(yy, "information value")
    xs = pd.Series(np.asarray(x) if not isinstance(x, pd.Series) else x.to_numpy())
    if len(xs) != yy.size:
        raise ValueError(f"x has {len(xs)} values but y has {yy.size}")
    missing = xs.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(xs) and not pd.api.types.is_bool_dtype(xs):
        v = xs.to_numpy(dtype=np.float64)
        codes = np.full(v.size, -1, dtype=np.int64)
        if (~missing).any():
            edges = _quantile_edges(v[~missing], bins)
            codes[~missing] = np.searchsorted(edges, v[~missing], side="right")
    else:
        codes = np.asarray(pd.factorize(xs, use_na_sentinel=True)[0], dtype=np.int64)
    table = pd.crosstab(codes, yy).reindex(columns=[0, 1], fill_value=0)
    good = table[0].to_numpy(np.float64) + smoothing
    bad = table[1].to_numpy(np.float64) + smoothing
    dg, db = good / good.sum(), bad / bad.sum()
    return float(np.sum((dg - db) * np.log(dg / db)))


def calibration_table(
    y: Any, p: Any, bins: int | Sequence[float] = 10, strategy: str = "quantile"
) -> pd.DataFrame:
    """Predicted against observed default/fraud rate per bin of ``p``.

    ``bins`` is a count (with ``strategy`` "quantile" or "uniform") or explicit
    interior cut points. Bins are right-open, [lo, hi). Columns: ``bin``,
    ``lower``, ``upper``, ``n``, ``mean_predicted``, ``observed_rate``, ``n_bad``.
    Empty bins are dropped.
    """
    yy = _binary(y)
    pp = _scores(p, yy.size, "p")
    if yy.size == 0:
        raise ValueError("calibration_table needs at least one row")
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins!r}")
        if strategy == "quantile":
            edges = _quantile_edges(pp, bins)
        elif strategy == "uniform":
            edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        else:
            raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    else:
        edges = np.unique(np.asarray(bins, dtype=np.float64))
    codes = np.searchsorted(edges, pp, side="right")
    full = np.r_[-np.inf, edges, np.inf]
    frame = pd.DataFrame({"bin": codes, "p": pp, "y": yy})
    out = frame.groupby("bin", sort=True).agg(
        n=("y", "size"),
        mean_predicted=("p", "mean"),
        observed_rate=("y", "mean"),
        n_bad=("y", "sum"),
    )
    out = out.reset_index()
    out.insert(1, "lower", full[out["bin"].to_numpy()])
    out.insert(2, "upper", full[out["bin"].to_numpy() + 1])
    return out


CostFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""Per-row cost given (y, flagged, amount); see :func:`linear_cost`."""


def linear_cost(
    missed_fraction: float = 1.0, false_alarm: float = 5.0, review: float = 1.0
) -> CostFn:
    """A simple cost model: a missed bad costs ``missed_fraction`` × amount,
    a flagged good costs ``false_alarm`` (friction, lost sale), every flag costs
    ``review`` (analyst time or step-up authentication).
    """

    def cost(y: np.ndarray, flagged: np.ndarray, amount: np.ndarray) -> np.ndarray:
        missed = (y == 1) & ~flagged
        false = (y == 0) & flagged
        return missed * missed_fraction * amount + false * false_alarm + flagged * review

    return cost


def expected_cost_curve(
    y: Any,
    p: Any,
    amount: Any,
    thresholds: Any,
    cost_fn: CostFn | None = None,
) -> pd.DataFrame:
    """Total and per-event cost of the policy "flag when ``p >= t``" for each threshold t.

    ``cost_fn(y, flagged, amount)`` returns per-row costs (default
    :func:`linear_cost`). Columns: ``threshold``, ``flag_rate``, ``tp``,
    ``fp``, ``fn``, ``value_caught``, ``cost``, ``cost_per_event``. The row with
    the lowest ``cost`` is the cost-optimal threshold among those tried.
    """
    yy = _binary(y)
    pp = _scores(p, yy.size, "p")
    aa = _scores(amount, yy.size, "amount")
    ts = np.asarray(thresholds, dtype=np.float64).ravel()
    if yy.size == 0 or ts.size == 0:
        raise ValueError("expected_cost_curve needs rows and at least one threshold")
    fn = cost_fn if cost_fn is not None else linear_cost()
    rows = []
    for t in ts:
        flagged = pp >= t
        cost = float(np.sum(fn(yy, flagged, aa)))
        rows.append(
            {
                "threshold": float(t),
                "flag_rate": float(flagged.mean()),
                "tp": int(np.sum(flagged & (yy == 1))),
                "fp": int(np.sum(flagged & (yy == 0))),
                "fn": int(np.sum(~flagged & (yy == 1))),
                "value_caught": float(aa[flagged & (yy == 1)].sum()),
                "cost": cost,
                "cost_per_event": cost / yy.size,
            }
        )
    return pd.DataFrame(rows)
