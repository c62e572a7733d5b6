"""Outcomes of logged decisions as known at a cut-off, and how biased that makes the set.

A decision log is not a random sample of payments with outcomes: the champion
declined some of them, and a declined payment has no outcome (nothing can be
charged back); for pay-later, only approved credit can default. ``selection_bias``
measures this per decision so the training report can say it in numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from training.datasets import DEFAULT_LABEL_DELAY, DataError
from training.log_source import LogContents

NO_OUTCOME_DECISIONS = frozenset({"decline"})  # never happened: no chargeback can come
CREDIT_EVENT = "credit_application"


def latest_fraud_labels(labels: pd.DataFrame, cutoff_ms: int) -> pd.DataFrame:
    """Per event_id, the is_fraud label in force at the cut-off (the latest label_time <= it)."""
    known = labels[(labels["label"] == "is_fraud") & (labels["label_time_ms"] <= cutoff_ms)]
    known = known.sort_values(["event_id", "label_time_ms", "received_at_ms"], kind="stable")
    return known.groupby("event_id", sort=False).tail(1).set_index("event_id")


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def outcomes_as_of(
    contents: LogContents, cutoff: pd.Timestamp, notes: list[str]
) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """Payment decisions usable for fraud training (events table shape), their X, and the bias.

    ``is_fraud`` is the label in force at the cut-off, 0 for a payment that went through
    (its ``label_time`` left empty: ``normalise_events`` puts it at the end of the
    chargeback window), missing for a declined one nobody labelled.
    """
    d = contents.decisions
    try:
        ts = pd.to_datetime(d["timestamp"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataError(f"the log holds an event timestamp that is unreadable: {exc}") from None
    cutoff_ms = int(cutoff.value // 1_000_000)
    mature_end = cutoff - DEFAULT_LABEL_DELAY
    payment = (d["event_type"] != CREDIT_EVENT).to_numpy()
    window = payment & (ts < mature_end).to_numpy()
    latest = latest_fraud_labels(contents.labels, cutoff_ms)
    value = d["event_id"].map(latest["value"]).astype("float64").to_numpy()
    label_ms = d["event_id"].map(latest["label_time_ms"]).astype("float64").to_numpy()
    explicit = ~np.isnan(value)
    through = ~d["decision"].isin(NO_OUTCOME_DECISIONS).to_numpy()
    is_fraud = np.where(explicit, value, np.where(through, 0.0, np.nan))
    label_time = pd.Series(pd.to_datetime(label_ms, unit="ms", utc=True), index=d.index)
    early = explicit & (label_time < ts).to_numpy()
    if early.any():
        notes.append(f"{int(early.sum())} labels were dated before their event: moved to it")
        label_time = label_time.where(~early, ts)
    degraded = d["degraded"].to_numpy(bool)
    usable = window & ~degraded & contents.complete
    bias = selection_bias(d[window], is_fraud[window], explicit[window], d[payment], mature_end)
    _note_exclusions(notes, d, ts, payment, window, degraded, contents.complete, mature_end, cutoff)
    frame = pd.DataFrame(
        {
            "event_id": d["event_id"],
            "timestamp": ts,
            "account_id": d["account_id"],
            "event_type": d["event_type"],
            "amount": d["amount"],
            "instrument_id": d["instrument_id"],
            "funding_source": d["funding_source"],
            "merchant_id": d["merchant_id"],
            "channel": d["channel"],
            "decision": d["decision"],
            "is_fraud": is_fraud,
            "label_time": label_time,
        }
    )
    return frame[usable].reset_index(drop=True), contents.features[usable], bias


def _note_exclusions(
    notes: list[str],
    d: pd.DataFrame,
    ts: pd.Series,
    payment: np.ndarray,
    window: np.ndarray,
    degraded: np.ndarray,
    complete: np.ndarray,
    mature_end: pd.Timestamp,
    cutoff: pd.Timestamp,
) -> None:
    credit = int((~payment).sum())
    if credit:
        notes.append(f"{credit} credit-application decisions are not fraud training data")
    late = int((payment & (ts >= mature_end).to_numpy()).sum())
    if late:
        notes.append(
            f"{late} payment decisions after {mature_end.isoformat()} (the chargeback window "
            f"before the cut-off {cutoff.isoformat()}) were left out: only their frauds are "
            "known yet"
        )
    if (window & degraded).any():
        notes.append(
            f"{int((window & degraded).sum())} degraded decisions were left out: the model "
            "did not score them on complete features"
        )
    partial = window & ~degraded & ~complete
    if partial.any():
        notes.append(
            f"{int(partial.sum())} decisions lack some of this code's features (logged by "
            "another feature set) and were left out"
        )


def selection_bias(
    window: pd.DataFrame,
    is_fraud: np.ndarray,
    explicit: np.ndarray,
    payments: pd.DataFrame,
    mature_end: pd.Timestamp,
) -> dict[str, Any]:
    """Shares declined, with and without an outcome, and fraud rates, per decision."""
    n = len(window)
    has_outcome = ~np.isnan(is_fraud)
    per: dict[str, dict[str, Any]] = {}
    for decision in sorted(window["decision"].unique()):
        rows = (window["decision"] == decision).to_numpy()
        with_outcome = rows & has_outcome
        per[str(decision)] = {
            "decisions": int(rows.sum()),
            "share_of_decisions": _share(int(rows.sum()), n),
            "with_outcome": int(with_outcome.sum()),
            "share_with_outcome": _share(int(with_outcome.sum()), int(rows.sum())),
            "explicitly_labelled": int((rows & explicit).sum()),
            "fraud_rate_with_outcome": _share(
                int(np.nansum(is_fraud[with_outcome])), int(with_outcome.sum())
            ),
        }
    labelled = int(has_outcome.sum())
    declined = int(window["decision"].isin(NO_OUTCOME_DECISIONS).sum())
    credit_line = payments["funding_source"] == "credit_line"
    not_approved = payments["decision"] != "approve"
    bias: dict[str, Any] = {
        "payment_decisions": n,
        "decisions_before": mature_end.isoformat(),
        "share_declined": _share(declined, n),
        "with_outcome": labelled,
        "share_with_outcome": _share(labelled, n),
        "without_outcome": n - labelled,
        "share_without_outcome": _share(n - labelled, n),
        "fraud_rate_with_outcome": _share(int(np.nansum(is_fraud)), labelled),
        "per_decision": per,
        "pay_later_payments_not_approved": int((credit_line & not_approved).sum()),
    }
    bias["statements"] = _statements(bias)
    return bias


def _statements(b: dict[str, Any]) -> list[str]:
    pct = "{:.2%}".format
    lines = [
        "Selection bias: declined payments have no outcome (a declined payment cannot be "
        "charged back), so this model learns only from traffic the champion let through and "
        f"from declines someone labelled. Of {b['payment_decisions']:,} payment decisions "
        f"before {b['decisions_before']}, {pct(b['share_declined'])} were declined; "
        f"{b['with_outcome']:,} ({pct(b['share_with_outcome'])}) have an outcome known at the "
        f"cut-off and {b['without_outcome']:,} ({pct(b['share_without_outcome'])}) have none "
        f"and were not used; the fraud rate among those with an outcome is "
        f"{pct(b['fraud_rate_with_outcome'])}.",
    ]
    for decision, p in b["per_decision"].items():
        lines.append(
            f"{decision}: {p['decisions']:,} decisions ({pct(p['share_of_decisions'])}), "
            f"{p['with_outcome']:,} with an outcome ({pct(p['share_with_outcome'])}; "
            f"{p['explicitly_labelled']:,} labelled explicitly), fraud rate among them "
            f"{pct(p['fraud_rate_with_outcome'])}."
        )
    lines.append(
        "Pay-later: credit that was not approved has no default outcome either "
        f"({b['pay_later_payments_not_approved']:,} credit-line payments were not approved); "
        "the credit model is not trained from the log."
    )
    return lines


__all__ = ["NO_OUTCOME_DECISIONS", "latest_fraud_labels", "outcomes_as_of", "selection_bias"]
