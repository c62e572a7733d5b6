"""How much fraud of each scenario a world gets: incident counts and fraud-ring sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import EVENTS_PER_ACCOUNT_DAY_ESTIMATE

# Share of fraud events per scenario and the mean events one incident produces.
SHARE = {
    "account_takeover": 0.17,
    "stolen_card": 0.17,
    "card_testing": 0.16,
    "compromised_merchant": 0.15,
    "promotion_abuse": 0.12,
    "credit_cash_out": 0.08,
    "mule": 0.15,
}
EVENTS_PER_INCIDENT = {
    "account_takeover": 3.2,
    "stolen_card": 4.0,
    "card_testing": 19.0,
    "compromised_merchant": 40.0,
    "promotion_abuse": 19.0,
    "credit_cash_out": 13.5,
    "mule": 26.0,
}
# Ring accounts (farms, cash-out rings, mules) may take at most this share of the accounts.
MAX_RING_SHARE = 0.3


@dataclass(frozen=True)
class FraudPlan:
    """Incident counts per scenario and the sizes of the rings that need their own accounts."""

    target_events: float
    incidents: dict[str, int]
    farm_sizes: np.ndarray  # accounts per promotion-abuse farm
    ring_sizes: np.ndarray  # accounts per credit cash-out ring
    mules: int

    @property
    def ring_accounts(self) -> int:
        return int(self.farm_sizes.sum() + self.ring_sizes.sum() + self.mules)


def plan_fraud(rng: np.random.Generator, accounts: int, days: int, rate: float) -> FraudPlan:
    """Every scenario gets at least one incident, so small worlds still contain all of them."""
    target = accounts * days * EVENTS_PER_ACCOUNT_DAY_ESTIMATE * rate
    incidents = {s: max(1, round(SHARE[s] * target / EVENTS_PER_INCIDENT[s])) for s in SHARE}
    cap = int(MAX_RING_SHARE * accounts)
    farm_sizes = rng.integers(8, 21, incidents["promotion_abuse"])
    ring_sizes = rng.integers(3, 7, incidents["credit_cash_out"])
    mules = incidents["mule"]
    while farm_sizes.sum() + ring_sizes.sum() + mules > cap and len(farm_sizes) > 1:
        farm_sizes = farm_sizes[:-1]
        ring_sizes = ring_sizes[: max(1, len(ring_sizes) - 1)]
        mules = max(1, mules - 1)
    incidents["promotion_abuse"] = len(farm_sizes)
    incidents["credit_cash_out"] = len(ring_sizes)
    incidents["mule"] = mules
    return FraudPlan(target, incidents, farm_sizes, ring_sizes, mules)
