"""Reasons: the features that pushed a score up, as sentences an analyst understands.

Contributions come from LightGBM's TreeSHAP (`pred_contrib`, log-odds); this
module only ranks them and words them. It costs 1-2 ms a row, so the service
computes reasons for non-approve decisions, and for approvals only on request.
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
