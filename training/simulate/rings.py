"""Organised fraud: promotion-abuse farms, credit cash-out rings, mules and compromised terminals.

These need their own accounts (or merchants), so they are set up with the population.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import (
    AU,
    CAT,
    CH,
    CITY_LAT,
    CITY_LON,
    CITY_WEIGHT,
    DAY,
    ET,
    HOUR,
    MINUTE,
    N_CAT,
    N_CITY,
    SC,
)
from .events import Batch, concat, new_batch
from .plan import SHARE, FraudPlan
from .population import FAV_CUM, Population


@dataclass(frozen=True)
class Rings:
    """Who belongs to which ring, and what each ring shares (devices, IPs, merchants, times)."""

    farm_of: np.ndarray  # per farm account: farm index
    farm_accounts: np.ndarray
    farm_dev0: np.ndarray
    farm_ndev: np.ndarray
    farm_ip0: np.ndarray
    farm_nip: np.ndarray
    farm_merchants: np.ndarray  # (farms, 2)
    cash_accounts: np.ndarray
    cash_merchant: np.ndarray  # per cash-out account
    mules: np.ndarray
    mule_t0: np.ndarray
    cm_start: np.ndarray  # per merchant: compromise window start (int64 max if never)
    cm_end: np.ndarray


def _sizes_expand(sizes: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def setup_rings(rng: np.random.Generator, pop: Population, plan: FraudPlan) -> Rings:
    """Overwrite the profile and habits of ring accounts (indices n_normal..n)."""
    a, cal, mk, al = pop.a, pop.cal, pop.market, pop.alloc
    span = cal.end - cal.start
    nf, nr = int(plan.farm_sizes.sum()), int(plan.ring_sizes.sum())
    farm_acc = pop.n_normal + np.arange(nf)
    cash_acc = pop.n_normal + nf + np.arange(nr)
    mules = pop.n_normal + nf + nr + np.arange(plan.mules)
    ring = np.concatenate([farm_acc, cash_acc, mules])
    a["role"][farm_acc], a["role"][cash_acc], a["role"][mules] = 1, 3, 2

    # Farms: bursts of new accounts sharing 2-4 devices and 1-2 IPs, no ordinary activity.
    F = len(plan.farm_sizes)
    farm_of = _sizes_expand(plan.farm_sizes)
    farm_t0 = cal.start + rng.random(F) * max(span - 3 * DAY, DAY)
    farm_city = rng.choice(N_CITY, F, p=CITY_WEIGHT)
    farm_ndev = rng.integers(2, 7, F)
    farm_dev0 = al.take("device", farm_ndev.sum()) + np.concatenate(
        [[0], np.cumsum(farm_ndev)[:-1]]
    )
    farm_nip = rng.integers(1, 4, F)
    farm_ip0 = al.take("ip", farm_nip.sum(), "farm") + np.concatenate(
        [[0], np.cumsum(farm_nip)[:-1]]
    )
    farm_cats = np.array([CAT["digital_goods"], CAT["gaming"], CAT["grocery"], CAT["restaurant"]])
    cats = farm_cats[rng.integers(0, len(farm_cats), 2 * F)]
    assert pop.popular is not None
    farm_merchants = pop.popular.pick(rng, cats).reshape(F, 2)
    a["created"][farm_acc] = farm_t0[farm_of] + (rng.random(nf) * 2 * DAY).astype(np.int64)
    a["city"][farm_acc] = farm_city[farm_of]
    a["carrier_ip"][farm_acc] = (
        a["carrier0"] + farm_city[farm_of, None] * 6 + rng.integers(0, 6, (nf, 2))
    )
    a["kyc"][farm_acc] = np.where(rng.random(nf) < 0.8, 1, 0)
    a["age"][farm_acc] = rng.integers(18, 31, nf)
    a["income"][farm_acc] = np.round(rng.uniform(1500, 4000, nf), -1)
    # A few ordinary-looking events afterwards, so a farm account is not a one-event account.
    a["rate"][farm_acc] = np.where(rng.random(nf) < 0.5, rng.uniform(0.05, 0.3, nf), 0.0)
    dev = farm_dev0[farm_of] + rng.integers(0, 1 << 30, nf) % farm_ndev[farm_of]
    own = rng.random(nf) < 0.2  # some farms buy cheap phones
    dev = np.where(own, al.take("device", nf) + np.arange(nf), dev)
    a["dev"][farm_acc] = np.stack([dev, np.full(nf, -1), np.full(nf, -1)], 1)
    a["dev_cum"][farm_acc] = 1.0
    ip = farm_ip0[farm_of] + rng.integers(0, 1 << 30, nf) % farm_nip[farm_of]
    a["home_ip"][farm_acc] = ip
    a["p_home"][farm_acc] = 0.7

    # Cash-out rings: a few months old accounts apply for a line, then spend it at once.
    R = len(plan.ring_sizes)
    ring_of = _sizes_expand(plan.ring_sizes)
    ring_city = rng.choice(N_CITY, R, p=CITY_WEIGHT)
    merchant = mk.by_city_cat.pick(rng, ring_city * N_CAT + CAT["luxury"])
    merchant = np.where(merchant < 0, mk.by_city.pick(rng, ring_city), merchant)
    merchant = np.where(
        merchant < 0, mk.by_cat_online.pick(rng, np.full(R, CAT["luxury"])), merchant
    )
    ring_t = cal.start + 3 * DAY + rng.random(R) * max(span - 6 * DAY, DAY)
    t_app = np.minimum(ring_t[ring_of] + rng.random(nr) * 3 * DAY, cal.end - 2 * DAY)
    a["app_time"][cash_acc] = t_app.astype(np.int64)
    a["requested"][cash_acc] = rng.integers(3, 13, nr) * 1000.0
    a["created"][cash_acc] = (t_app - rng.uniform(20, 120, nr) * DAY).astype(np.int64)
    a["city"][cash_acc] = ring_city[ring_of]
    a["kyc"][cash_acc] = 2
    a["age"][cash_acc] = rng.integers(20, 41, nr)
    a["income"][cash_acc] = np.round(rng.uniform(8000, 15000, nr), -1)
    a["rate"][cash_acc] = 0.25
    a["z"][cash_acc] = rng.normal(-1.0, 0.5, nr)

    # Mules: young accounts, little ordinary activity, activated once.
    a["created"][mules] = (
        cal.start - 60 * DAY + rng.random(plan.mules) * (span + 50 * DAY)
    ).astype(np.int64)
    a["created"][mules] = np.minimum(a["created"][mules], cal.end - 10 * DAY)
    lo = np.maximum(a["created"][mules] + 5 * DAY, cal.start)
    mule_t0 = lo + rng.random(plan.mules) * np.maximum(cal.end - 3 * DAY - lo, HOUR)
    a["age"][mules] = rng.integers(18, 26, plan.mules)
    a["income"][mules] = np.round(rng.uniform(2000, 5000, plan.mules), -1)
    a["rate"][mules] = rng.uniform(0.3, 1.2, plan.mules)

    city = a["city"][ring]
    a["home_lat"][ring] = (CITY_LAT[city] + rng.normal(0, 0.03, len(ring))).round(5)
    a["home_lon"][ring] = (CITY_LON[city] + rng.normal(0, 0.03, len(ring))).round(5)
    a["trip_city"][ring] = -1
    a["new_dev"][ring] = -1
    a["bill_m"][ring] = -1
    a["shop"][ring], a["welcome"][ring] = False, False
    a["big_t"][ring], a["party_t"][ring] = -1, -1
    cm_start, cm_end = _compromise(rng, pop, plan)
    return Rings(
        farm_of, farm_acc, farm_dev0, farm_ndev, farm_ip0, farm_nip, farm_merchants,
        cash_acc, merchant[ring_of], mules, mule_t0.astype(np.int64), cm_start, cm_end,
    )  # fmt: skip


def _compromise(rng: np.random.Generator, pop: Population, plan: FraudPlan) -> tuple:
    """Busy offline terminals, each compromised for a window long enough for its fraud budget."""
    a, mk, cal = pop.a, pop.market, pop.cal
    w = np.diff(np.concatenate([[0], FAV_CUM]))
    traffic = a["rate"][:, None] * a["p_fav"][:, None] * 0.8 * w[None, :]
    per_day = 1.3 * np.bincount(a["fav"].ravel(), traffic.ravel(), minlength=mk.size)
    per_day[mk.online] = 0
    k = plan.incidents["compromised_merchant"]
    busy = np.argsort(-per_day, kind="stable")[: max(4 * k, 10)]
    chosen = rng.choice(busy, min(k, len(busy)), replace=False)
    budget = SHARE["compromised_merchant"] * plan.target_events / max(len(chosen), 1)
    days = np.clip(budget / np.maximum(per_day[chosen] * 0.85, 1e-3), 2, min(21, cal.days))
    start = cal.start + rng.random(len(chosen)) * (cal.end - cal.start - days * DAY)
    big = np.iinfo(np.int64).max
    cm_start, cm_end = np.full(mk.size, big), np.full(mk.size, big)
    cm_start[chosen] = start.astype(np.int64)
    cm_end[chosen] = (start + days * DAY).astype(np.int64)
    return cm_start, cm_end


def ring_events(rng: np.random.Generator, pop: Population, r: Rings) -> Batch:
    return concat([_promotion(rng, pop, r), _cash_out(rng, pop, r), _mule(rng, pop, r)])


def _located(pop: Population, rng: np.random.Generator, acc: np.ndarray) -> dict:
    a = pop.a
    n = len(acc)
    return {
        "lat": a["home_lat"][acc] + rng.normal(0, 0.01, n),
        "lon": a["home_lon"][acc] + rng.normal(0, 0.01, n),
    }


def _promotion(rng: np.random.Generator, pop: Population, r: Rings) -> Batch:
    """Each farm account claims the new-user bonus with a minimal first payment (some twice)."""
    a, cal = pop.a, pop.cal
    acc = np.concatenate(
        [r.farm_accounts, r.farm_accounts[rng.random(len(r.farm_accounts)) < 0.35]]
    )
    second = np.arange(len(acc)) >= len(r.farm_accounts)
    n = len(acc)
    farm = r.farm_of[acc - r.farm_accounts[0]]
    t = (
        a["created"][acc]
        + rng.integers(10 * MINUTE, 2 * HOUR, n)
        + second * rng.integers(DAY, 3 * DAY, n)
    )
    keep = t < cal.end
    merchant = r.farm_merchants[farm, second.astype(np.int64)]
    b = new_batch(
        n,
        t=t,
        acct=acc,
        etype=ET["payment"],
        amount=np.maximum(
            np.round(
                np.where(rng.random(n) < 0.5, rng.uniform(0.01, 1.0, n), rng.uniform(1, 30, n)), 2
            ),
            0.01,
        ),
        channel=CH["app"],
        merchant=merchant,
        inst=a["inst"][acc, 0],
        device=a["dev"][acc, 0],
        ip=np.where(rng.random(n) < 0.65, a["home_ip"][acc], a["carrier_ip"][acc, 0]),
        auth=np.where(rng.random(n) < 0.6, AU["none"], AU["password"]),
        fraud=1,
        scen=SC["promotion_abuse"],
        **_located(pop, rng, acc),
    )
    return {k: v[keep] for k, v in b.items()}


def _cash_out(rng: np.random.Generator, pop: Population, r: Rings) -> Batch:
    """The fresh line spent within hours at the ring's merchant, in round amounts."""
    a = pop.a
    k = rng.integers(2, 5, len(r.cash_accounts))
    owner = np.repeat(np.arange(len(r.cash_accounts)), k)
    acc = r.cash_accounts[owner]
    n = len(acc)
    limit = a["credit_limit"][acc]
    online = pop.market.online[r.cash_merchant[owner]]
    part = np.maximum(np.floor(limit / k[owner] / 500) * 500, 500)
    odd = rng.random(len(r.cash_accounts))[owner] < 0.3  # priced like goods: 2 980, 4 399
    part = np.where(odd, part * rng.uniform(0.9, 0.99, n) - 0.01 * rng.integers(0, 2, n), part)
    part = np.round(part, 2)
    first = (a["app_time"] + rng.integers(20 * MINUTE, 6 * HOUR, pop.n))[acc]
    gap = rng.integers(5 * MINUTE, 60 * MINUTE, n)
    seq = np.arange(n) - np.repeat(np.concatenate([[0], np.cumsum(k)[:-1]]), k)
    t = first + seq * gap
    return new_batch(
        n,
        t=t,
        acct=acc,
        etype=ET["payment"],
        amount=part,
        channel=np.where(rng.random(n) < 0.6, CH["qr"], CH["nfc"]),
        merchant=r.cash_merchant[owner],
        inst=a["inst"][acc, 3],
        device=a["dev"][acc, 0],
        ip=a["carrier_ip"][acc, 0],
        lat=np.where(online, a["home_lat"][acc], pop.market.lat[r.cash_merchant[owner]]),
        lon=np.where(online, a["home_lon"][acc], pop.market.lon[r.cash_merchant[owner]]),
        auth=np.where(rng.random(n) < 0.5, AU["password"], AU["fingerprint"]),
        fraud=1,
        scen=SC["credit_cash_out"],
    )


def _mule(rng: np.random.Generator, pop: Population, r: Rings) -> Batch:
    """Many payers send money to a mule, which moves each sum on within minutes; some mules
    take a rush of transfers within the hour, others over two days."""
    from .behaviour import _fill

    a, cal = pop.a, pop.cal
    k = rng.integers(8, 19, len(r.mules))
    owner = np.repeat(np.arange(len(r.mules)), k)
    n = len(owner)
    mule = r.mules[owner]
    rush = (rng.random(len(r.mules)) < 0.4)[owner]
    t_in = r.mule_t0[owner] + np.where(rush, rng.integers(0, HOUR, n), rng.integers(0, 2 * DAY, n))
    eligible = np.flatnonzero(a["created"][: pop.n_normal] < cal.start)
    payer = eligible[rng.integers(0, len(eligible), n)] if len(eligible) else np.zeros(n, np.int64)
    amount = np.exp(np.log(800) + 0.6 * rng.normal(size=n))
    amount = np.where(rng.random(n) < 0.5, np.maximum(np.round(amount, -2), 100), amount)
    amount = np.round(amount, 2)
    none = np.full(n, -1)
    incoming = _fill(rng, pop, payer, t_in, ET["transfer"], amount, none, mule,
                     channel=CH["app"], fraud=1, scen=SC["mule"])  # fmt: skip
    out_w = rng.random(n) < 0.6
    other = r.mules[rng.integers(0, len(r.mules), n)]
    onward = np.where(other == mule, pop.n_normal - 1 - owner % max(pop.n_normal, 1), other)
    outgoing = _fill(
        rng, pop, mule, t_in + rng.integers(MINUTE, 15 * MINUTE, n),
        np.where(out_w, ET["withdrawal"], ET["transfer"]),
        np.round(amount * rng.uniform(0.9, 0.99, n), 2), none, np.where(out_w, -1, onward),
        channel=CH["app"], fraud=1, scen=SC["mule"],
    )  # fmt: skip
    b = concat([incoming, outgoing])
    return {k: v[b["t"] < cal.end] for k, v in b.items()}
