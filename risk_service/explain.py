"""Reasons: the features that pushed a score up, as sentences an analyst understands.

This module only ranks contributions and words them; `FraudModel.contributions` computes
them, one of two ways (the setting ``REASONS_METHOD``). Either way a reason's
``contribution`` is in log-odds of the raw model score (before calibration), and a
row's contributions plus a bias add up to its raw margin:

* ``"treeshap"`` (the default): TreeSHAP, the values of LightGBM's ``pred_contrib``
  computed on the compiled forest (`risk_service.treeshap`). A feature's contribution is
  its Shapley value: its average effect over all orders of revealing the features, with
  "unknown" features averaged over the training rows' paths (counts). Exact and
  consistent, but ~1.9 ms a row on the fraud model (a third of LightGBM's own), so the
  service computes reasons for non-approve decisions and for approvals only on request.
* ``"path"``: path attribution (Saabas, "treeinterpreter") on the compiled forest
  (`CompiledForest.path_contributions`), about 60 µs a row. In each tree, the row's
  decision path goes from the root to a leaf; every split on it moves the expected value
  from the node's to the chosen child's (LightGBM's ``internal_value``: the output had
  the tree stopped there), and that change is credited to the split feature. The bias is
  the sum of the root values. It reads only the row's own path, so it credits features
  split near the roots more than TreeSHAP does, and ignores the effect a feature has
  through the branches the row did not take.

How often they agree (`compare_reasons`, TreeSHAP as the reference), measured by
``bench/bench_reasons.py`` on the committed fraud model (fraud-20261128-10510bfe85) and
the default world's events of its out-of-time test period:

=============================  =====  =====  ============  ===========  ================
flagged events                 rows   top-1  top-3 as set  top-3 share  top-1 in top-3
=============================  =====  =====  ============  ===========  ================
p >= review threshold          583    57%    39%           76%          94%
non-approve (p >= challenge)   2000   66%    37%           76%          91%
top 5% by probability          2000   65%    37%           76%          90%
=============================  =====  =====  ============  ===========  ================

(top-1: the same first reason; top-3 share: how many of path attribution's first three
reasons are among TreeSHAP's first three; top-1 in top-3: its first reason is among them.)
The two mostly disagree between features of one fraud pattern, e.g. a card-testing burst
named by ``instrument_small_payments_1h`` rather than
``seconds_since_instrument_previous_event``. Still, the first reason differs on a third
of the non-approve events and on 43% of those sent to review or declined, below the 60%
agreement this project asks of a default: TreeSHAP stays the default, and path
attribution (about 70x faster) is a setting for when latency matters more than matching
it. Using count-weighted node means (TreeSHAP's own expectations) instead of
``internal_value`` agreed worse: top-1 35% on the review rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from risk_service import schema
from risk_service.features import FEATURE_DESCRIPTIONS

CATEGORIES: dict[str, tuple[str, ...]] = {
    "event_type": schema.EVENT_TYPES,
    "channel": schema.CHANNELS,
    "funding_source": schema.FUNDING_SOURCES,
    "auth_method": schema.AUTH_METHODS,
    "merchant_category": schema.MERCHANT_CATEGORIES,
}

FIRST_SEEN = {
    "is_new_device_for_account": "first event from this device for this account in 90 days",
    "is_new_ip_for_account": "first event from this IP address for this account in 90 days",
    "is_new_payee_for_account": "first transfer to this payee in 90 days",
    "is_new_merchant_for_account": "first payment at this merchant in 90 days",
    "is_new_instrument_for_account": "first use of this card or instrument in 90 days",
}

RATIOS = {
    "amount_to_account_mean_30d": "amount is {x}x this account's usual (30-day mean)",
    "amount_to_instrument_mean_30d": "amount is {x}x this instrument's usual (30-day mean)",
    "amount_to_merchant_mean_7d": "amount is {x}x this merchant's usual ticket (7-day mean)",
    "amount_to_monthly_income": "amount is {x}x the holder's monthly income",
    "requested_to_income": "requested limit is {x}x the monthly income",
    "credit_line_utilisation_30d": "credit line {pct}% used in the last 30 days",
}


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


def reason_text(feature: str, value: float) -> str:
    """One sentence for one feature value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        described = FEATURE_DESCRIPTIONS.get(feature, feature.replace("_", " "))
        return f"{described}: unknown"
    if feature in CATEGORIES:
        names = CATEGORIES[feature]
        code = int(value)
        label = names[code] if 0 <= code < len(names) else "unknown"
        return f"{feature.replace('_', ' ')} is {label}"
    if feature in FIRST_SEEN:
        return FIRST_SEEN[feature] if value >= 0.5 else f"known {feature[7:-12]} for this account"
    if feature in RATIOS:
        return RATIOS[feature].format(x=f"{value:.1f}", pct=f"{100 * value:.0f}")
    if feature == "speed_kmh_from_previous_location":
        return f"travel at {value:,.0f} km/h would be needed from the previous location"
    if feature.startswith("seconds_since"):
        subject = feature[len("seconds_since_") : -len("_previous_event")]
        return f"{_number(value)} seconds since this {subject}'s previous event"
    if feature == "amount":
        return f"amount is {value:,.2f}"
    described = FEATURE_DESCRIPTIONS.get(feature, feature.replace("_", " "))
    if "amount" in feature or "limit" in feature or "income" in feature:
        return f"{described}: {value:,.2f}"
    if described.startswith("number of "):
        return f"{_number(value)}: {described}"
    return f"{described}: {_number(value)}"


def compare_reasons(
    names: Sequence[str], X: np.ndarray, ours: np.ndarray, reference: np.ndarray
) -> dict[str, float]:
    """How often `top_reasons` from two contribution matrices (n, len(names)) agree on rows X.

    ``top1``: same first reason; ``top3_set``: same first three reasons (in any order);
    ``top3_share``: mean share of our first three that the reference also lists first three;
    ``top1_in_top3``: our first reason is among the reference's first three.
    """
    counts = {"top1": 0.0, "top3_set": 0.0, "top3_share": 0.0, "top1_in_top3": 0.0}
    for x, a, b in zip(X, ours, reference, strict=True):
        mine = [r["feature"] for r in top_reasons(names, x, a)[:3]]
        theirs = [r["feature"] for r in top_reasons(names, x, b)[:3]]
        counts["top1"] += mine[0] == theirs[0]
        counts["top3_set"] += set(mine) == set(theirs)
        counts["top3_share"] += len(set(mine) & set(theirs)) / 3
        counts["top1_in_top3"] += mine[0] in theirs
    return {key: value / max(len(X), 1) for key, value in counts.items()}


def top_reasons(
    names: Sequence[str],
    values: Sequence[float] | np.ndarray,
    contributions: Sequence[float] | np.ndarray,
    *,
    minimum: int = 3,
    maximum: int = 5,
) -> list[dict[str, Any]]:
    """The `maximum` largest positive contributions; padded to `minimum` by the next largest.

    Every non-approve decision gets 3-5 reasons even when a rule, not the model,
    drove it: then the features that raised the score most still say why it
    looked as it did.
    """
    order = sorted(range(len(names)), key=lambda j: (-contributions[j], names[j]))
    chosen = [j for j in order[:maximum] if contributions[j] > 0]
    for j in order:
        if len(chosen) >= minimum:
            break
        if j not in chosen:
            chosen.append(j)
    out = []
    for j in chosen:
        value = float(values[j])
        out.append(
            {
                "feature": names[j],
                "value": None if math.isnan(value) else value,
                "contribution": round(float(contributions[j]), 6),
                "text": reason_text(names[j], value),
            }
        )
    return out
