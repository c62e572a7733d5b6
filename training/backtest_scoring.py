"""Backtest decisions: the service's decision logic applied to precomputed feature rows.

The service decides one event at a time inside `risk_service.scoring.Scorer`; a
backtest has the same features as a matrix (computed offline, equal to the
online ones) and must give the same answers. So this module calls the same
pieces: `FraudModel.predict_proba`, `scores.decide_many` (the vectorised
`decide`, equal element by element), `Policy.evaluate` with a `FeatureView`
per row, and `explain.top_reasons`. The one credit check of a pay-later payment is the
service's own `credit_for_payment`; `tests/test_backtest.py` holds the whole
decision equal to the service's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from risk_service import explain
from risk_service.credit_model import CreditModel
from risk_service.features import CREDIT_FEATURE_NAMES, FEATURE_NAMES
from risk_service.fraud_model import FraudModel
from risk_service.policy import SEVERITY, Policy
from risk_service.schema import EVENT_COLUMNS
from risk_service.scores import DECISIONS, decide_many, fraud_band, fraud_scores
from risk_service.scoring import FeatureView, ScoringSettings, credit_for_payment

FRAUD_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
CREDIT_INDEX: dict[str, int] = {name: i for i, name in enumerate(CREDIT_FEATURE_NAMES)}
REQUEST_COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS if not c.label)


@dataclass(frozen=True)
class Candidate:
    """One column set of the backtest: a fraud model, an optional credit model, a policy."""

    name: str
    fraud: FraudModel
    credit: CreditModel | None
    policy: Policy

    def describe(self) -> dict[str, str | None]:
        return {
            "fraud": self.fraud.version,
            "credit": self.credit.version if self.credit else None,
            "policy": self.policy.version,
            "policy_file": self.policy.source,
        }


def request_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row as `POST /score`'s validator hands it to the core: absent values left out,
    the timestamp as a UTC ISO string with `Z` plus `timestamp_ms` (policy rules read these)."""
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    ms = ts.dt.as_unit("ms").astype("int64").tolist()
    whole = ts.dt.strftime("%Y-%m-%dT%H:%M:%S")
    micro = ts.dt.microsecond.to_numpy()
    text = np.where(
        micro > 0, whole + "." + pd.Series(micro).map("{:06d}".format).to_numpy(), whole
    )
    cols = [c for c in REQUEST_COLUMNS if c in frame.columns and c != "timestamp"]
    values = [frame[c].tolist() for c in cols]
    out: list[dict[str, Any]] = []
    for i, row in enumerate(zip(*values, strict=True)):
        event: dict[str, Any] = {}
        for name, v in zip(cols, row, strict=True):
            if v is None or v != v or v is pd.NA:
                continue
            event[name] = v
        event["timestamp"] = f"{text[i]}Z"
        event["timestamp_ms"] = ms[i]
        out.append(event)
    return out


def service_credit_for_payment(
    event: dict[str, Any],
    view: FeatureView,
    xc: np.ndarray,
    pd_: float | None,
    model: CreditModel | None,
    settings: ScoringSettings,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The service's `credit_for_payment` for one pay-later payment whose PD (`pd_`) was
    predicted in a batch, with the credit decision kept in the block for the output columns."""
    block, rules, decision = credit_for_payment(event, view, xc, pd_, model, settings)
    if decision is not None:
        block["decision"] = decision
    return block, rules


def fraud_probabilities(model: FraudModel, X: np.ndarray, threads: int) -> np.ndarray:
    """`FraudModel.predict_proba` for a large batch: the compiled forest the service uses
    (its kernel releases the GIL) on `threads` slices at once, then the same calibration."""
    if threads <= 1 or len(X) < 10_000:
        return model.predict_proba(X)
    from concurrent.futures import ThreadPoolExecutor

    slices = np.array_split(np.asarray(X, np.float64), threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        raw = np.concatenate(list(pool.map(model.raw, slices)))
    return model.calibrate(raw)


def _reasons(
    names: Sequence[str], X: np.ndarray, rows: np.ndarray, model: FraudModel | CreditModel
) -> dict[int, str]:
    """Reasons JSON per row, from one batched TreeSHAP call (rows are independent)."""
    if len(rows) == 0:
        return {}
    contributions = model.contributions(X[rows])
    return {
        int(r): json.dumps(explain.top_reasons(names, X[r], contributions[j]))
        for j, r in enumerate(rows)
    }


def decide_chunk(
    candidate: Candidate,
    events: list[dict[str, Any]],
    X: np.ndarray,
    XC: np.ndarray,
    settings: ScoringSettings,
    *,
    reasons: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """Columns of one candidate for one chunk. `XC` holds credit features (NaN rows for events
    not funded by the credit line); returns arrays/lists keyed by output column name.
    Without `reasons` the TreeSHAP reasons (about 1.5 ms a row) are left out."""
    n = len(events)
    p = fraud_probabilities(candidate.fraud, X, threads) if n else np.zeros(0)
    model_decision = decide_many(p, candidate.fraud.thresholds)
    is_credit = np.array([e.get("funding_source") == "credit_line" for e in events], dtype=bool)
    credit_rows = np.flatnonzero(is_credit)
    pds: dict[int, float] = {}
    if candidate.credit is not None and len(credit_rows):
        pd_values = candidate.credit.predict_pd(XC[credit_rows])
        pds = {int(r): float(v) for r, v in zip(credit_rows, pd_values, strict=True)}
    decision = np.zeros(n, dtype=np.int8)
    rules_json: list[str] = []
    credit_cols: dict[str, list[Any]] = {
        k: [None] * n
        for k in (
            "probability_of_default",
            "credit_score",
            "credit_band",
            "credit_decision",
            "recommended_limit",
            "within_limit",
        )
    }
    credit_reason_rows: list[int] = []
    policy = candidate.policy
    for i, event in enumerate(events):
        view = FeatureView(X[i], FRAUD_INDEX)
        outcome = policy.evaluate(event, view, DECISIONS[model_decision[i]])
        final = outcome.decision
        rules = list(outcome.rules_fired)
        if is_credit[i]:
            block, credit_rules = service_credit_for_payment(
                event, view, XC[i], pds.get(i), candidate.credit, settings
            )
            rules += credit_rules
            for rule in credit_rules:
                if SEVERITY[rule["action"]] > SEVERITY[final]:
                    final = rule["action"]
            check = block["limit_check"]
            credit_cols["within_limit"][i] = check["within_limit"]
            if "probability_of_default" in block:
                credit_cols["probability_of_default"][i] = block["probability_of_default"]
                credit_cols["credit_score"][i] = block["score"]
                credit_cols["credit_band"][i] = block["band"]
                credit_cols["credit_decision"][i] = block["decision"]
                credit_cols["recommended_limit"][i] = block["recommended_limit"]
                if block["decision"] != "approve":
                    credit_reason_rows.append(i)
        decision[i] = SEVERITY[final]
        rules_json.append(json.dumps(rules) if rules else "[]")  # most rows fire nothing
    flagged = np.flatnonzero(decision > 0) if reasons else np.zeros(0, np.int64)
    if not reasons:
        credit_reason_rows = []
    fraud_reasons = _reasons(FEATURE_NAMES, X, flagged, candidate.fraud)
    credit_reasons: dict[int, str] = {}
    if candidate.credit is not None:
        credit_reasons = _reasons(
            CREDIT_FEATURE_NAMES, XC, np.asarray(credit_reason_rows, np.int64), candidate.credit
        )
    scores = fraud_scores(p)
    return {
        "fraud_probability": p,
        "fraud_score": scores,
        "fraud_band": [fraud_band(int(s)) for s in scores],
        "decision": [DECISIONS[d] for d in decision],
        "rules_fired": rules_json,
        "reasons": [fraud_reasons.get(i) for i in range(n)],
        **credit_cols,
        "credit_reasons": [credit_reasons.get(i) for i in range(n)],
        "_decision_code": decision,
    }
