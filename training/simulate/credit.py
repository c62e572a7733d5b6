"""Pay-later credit: who holds or asks for a line, and who defaults in the performance window."""

from __future__ import annotations

import numpy as np

from .config import CREDIT_GRACE_DAYS, CREDIT_PERFORMANCE_DAYS, DAY
from .population import Population

P_APPLY = 0.15  # accounts without a line that apply during the period
P_REVIEW = 0.45  # accounts with a line whose limit is reviewed during the period
DEFAULT_INTERCEPT = -3.2  # tuned for a ~12% default rate


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def assign_lines(rng: np.random.Generator, pop: Population) -> None:
    """Lines held since before the period, new applications and limit reviews (normal accounts).

    Ring accounts already carry their cash-out application from rings.setup_rings.
    """
    a, cal, n = pop.a, pop.cal, pop.n
    z, kyc, income, created = a["z"], a["kyc"], a["income"], a["created"]
    normal = a["role"] == 0
    p_line = _sigmoid(0.9 * z - 0.9 + 0.35 * (kyc - 1.5)) * (kyc >= 1)
    held = normal & (created < cal.start) & (rng.random(n) < p_line)
    limit = np.clip(np.round(income * rng.uniform(0.5, 2.5, n), -2), 500, 50_000)
    lo = np.maximum(cal.start + 7 * DAY, created + 3 * DAY)
    span = cal.end - DAY - lo
    apply = normal & ~held & (span > 0) & (rng.random(n) < P_APPLY)
    t_app = lo + (rng.random(n) * np.maximum(span, 0)).astype(np.int64)
    review = held & (rng.random(n) < P_REVIEW)
    t_rev = cal.start + 7 * DAY + (rng.random(n) * max(cal.end - cal.start - 8 * DAY, 1))
    ring_app = a["app_time"] >= 0
    a["app_time"] = np.where(apply, t_app, a["app_time"]).astype(np.int64)
    a["review_time"] = np.where(review, t_rev, -1).astype(np.int64)
    a["requested"] = np.where(apply, limit, a["requested"])
    a["review_limit"] = np.clip(np.round(limit * rng.uniform(1.2, 2.0, n), -2), 500, 80_000)
    a["credit_limit"] = np.where(
        held | apply | ring_app, np.where(ring_app, a["requested"], limit), 0.0
    )
    big = np.iinfo(np.int64).max
    a["line_from"] = np.where(held, created, np.where(apply | ring_app, a["app_time"], big))
    has = a["credit_limit"] > 0
    k = int(has.sum())
    a["inst"][has, 3] = pop.alloc.take("instrument", k) + np.arange(k)


def credit_rows(rng: np.random.Generator, pop: Population) -> dict[str, np.ndarray]:
    """One row per application or limit review; `defaulted` from the latent score plus behaviour.

    Observable proxies of the latent creditworthiness (income, KYC, tenure, bill regularity,
    top-ups, credit-line use) carry the signal; the noise term keeps a model from being perfect.
    Cash-out ring accounts always default.
    """
    a = pop.a
    app = np.flatnonzero(a["app_time"] >= 0)
    rev = np.flatnonzero(a["review_time"] >= 0)
    acct = np.concatenate([app, rev])
    t = np.concatenate([a["app_time"][app], a["review_time"][rev]])
    req = np.concatenate([a["requested"][app], a["review_limit"][rev]])
    kind = np.concatenate([np.zeros(len(app), np.int8), np.ones(len(rev), np.int8)])
    z, income = a["z"][acct], a["income"][acct]
    tenure_years = np.maximum(t - a["created"][acct], 0) / (365 * DAY)
    logit = (
        DEFAULT_INTERCEPT
        - 1.1 * z
        + 1.5 * (a["line_use"][acct] - 0.3)
        + 0.35 * np.log(req / income)
        - 0.25 * np.log1p(tenure_years)
        + rng.normal(0, 1.1, len(acct))
    )
    defaulted = (rng.random(len(acct)) < _sigmoid(logit)) | (a["role"][acct] == 3)
    order = np.lexsort((acct, t))
    label_t = t + (CREDIT_PERFORMANCE_DAYS + CREDIT_GRACE_DAYS) * DAY
    return {
        "account": acct[order],
        "t": t[order],
        "requested": np.round(req[order], 2),
        "kind": kind[order],
        "defaulted": defaulted[order].astype(np.int8),
        "label_t": label_t[order],
    }
