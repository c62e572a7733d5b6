"""Fraud against ordinary accounts: account takeover, stolen card, card testing.

Each incident leaves the traces analysts look for: a device never seen for the account, an
unfamiliar IP and city, amounts far above habit, bursts of tiny payments.
"""

from __future__ import annotations

import numpy as np

from .behaviour import CUM_WEEKDAY, _fill
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
    ONLINE_FRAUD_CATEGORIES,
    SC,
)
from .events import Batch, concat, new_batch
from .plan import FraudPlan
from .population import CARRIER_PER_CITY, Population

# Online categories where stolen cards are also spent: big mainstream shops, not only the
# digital goods and electronics that are easy to resell.
MAINSTREAM_ONLINE = np.array(
    [CAT["fashion"], CAT["grocery"], CAT["travel"], CAT["entertainment"], CAT["restaurant"]]
)


def _expand(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Incident index and position inside the incident for each event."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    seq = np.arange(len(owner)) - np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return owner, seq


def _cum_gaps(
    rng: np.random.Generator, owner: np.ndarray, seq: np.ndarray, lo: int, hi: int
) -> np.ndarray:
    """Offsets from the incident start: sums of random gaps, zero for the first event."""
    gaps = np.where(seq == 0, 0, rng.integers(lo, hi, len(owner)))
    total = np.cumsum(gaps)
    start = np.repeat(total[np.flatnonzero(seq == 0)], np.bincount(owner))
    return total - start


def _victims(rng: np.random.Generator, pop: Population, k: int, need_card: bool) -> tuple:
    """Ordinary accounts opened at least a day before the incident, and the incident start."""
    a, cal = pop.a, pop.cal
    ok = (a["role"] == 0) & (a["created"] < cal.end - 2 * DAY)
    if need_card:
        ok &= (a["inst"][:, 1] >= 0) | (a["inst"][:, 2] >= 0)
    pool = np.flatnonzero(ok)
    v = rng.choice(pool, k, replace=k > len(pool))
    lo = np.maximum(a["created"][v] + DAY, cal.start)
    t0 = lo + (rng.random(k) * (cal.end - 2 * HOUR - lo)).astype(np.int64)
    # Most fraudsters keep office hours like everybody else; some work at night.
    hour = np.minimum(np.searchsorted(CUM_WEEKDAY, rng.random(k)), 23)
    day_hour = t0 - t0 % DAY + hour * HOUR + rng.integers(0, HOUR, k)
    t0 = np.where((rng.random(k) < 0.65) & (day_hour >= lo), day_hour, t0)
    return v, t0


def _card(pop: Population, v: np.ndarray) -> np.ndarray:
    inst = pop.a["inst"][v]
    return np.where(inst[:, 2] >= 0, inst[:, 2], inst[:, 1])


def fraud_events(
    rng: np.random.Generator, pop: Population, plan: FraudPlan, mules: np.ndarray
) -> Batch:
    proxies = pop.a["proxy0"] + np.arange(pop.a["n_proxy"])
    parts = [
        _takeover(rng, pop, plan.incidents["account_takeover"], proxies, mules),
        _stolen_card(rng, pop, plan.incidents["stolen_card"], proxies),
        _card_testing(rng, pop, plan.incidents["card_testing"], proxies),
    ]
    b = concat(parts)
    return {k: v[b["t"] < pop.cal.end] for k, v in b.items()}


def _elsewhere(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    city = rng.choice(N_CITY, k, p=CITY_WEIGHT)
    return city, CITY_LAT[city] + rng.normal(0, 0.03, k), CITY_LON[city] + rng.normal(0, 0.03, k)


def _takeover(
    rng: np.random.Generator, pop: Population, k: int, proxies: np.ndarray, mules: np.ndarray
) -> Batch:
    """Either a takeover (new device + IP, sometimes from the victim's own city and carrier, a
    password reset, transfers to new payees, a drain) or a scam where the victim is talked into
    paying from their own phone (authorised push payment): only the new payees and the sums
    stand out."""
    a = pop.a
    v, t0 = _victims(rng, pop, k, need_card=False)
    scam = rng.random(k) < 0.3
    n_tr = rng.integers(1, 5, k)
    wd = (rng.random(k) < 0.5) & ~scam
    owner, seq = _expand(n_tr + wd)
    n = len(owner)
    acc = v[owner]
    t = t0[owner] + 2 * MINUTE + _cum_gaps(rng, owner, seq, MINUTE, 8 * MINUTE)
    transfer = seq < n_tr[owner]
    city, lat, lon = _elsewhere(rng, k)
    away = rng.random(k) < 0.35
    city = np.where(away, city, a["city"][v])
    lat = np.where(away, lat, a["home_lat"][v] + rng.normal(0, 0.02, k))
    lon = np.where(away, lon, a["home_lon"][v] + rng.normal(0, 0.02, k))
    carrier = a["carrier0"] + city * CARRIER_PER_CITY + rng.integers(0, CARRIER_PER_CITY, k)
    ip = np.where(rng.random(k) < 0.35, proxies[rng.integers(0, len(proxies), k)], carrier)
    drain = a["income"][v] * rng.uniform(0.2, 1.2, k)
    amount = np.where(
        transfer,
        drain[owner] / n_tr[owner] * rng.uniform(0.7, 1.3, n),
        a["income"][acc] * rng.uniform(0.2, 0.8, n),
    )
    amount = np.where(rng.random(n) < 0.5, np.maximum(np.round(amount, -2), 100), amount)
    new_payee = np.where(
        rng.random(n) < 0.5, mules[rng.integers(0, len(mules), n)], rng.integers(0, pop.n_normal, n)
    )
    new_payee = np.where(new_payee == acc, mules[0], new_payee)
    device = pop.alloc.take("device", k) + np.arange(k)
    etype = np.where(transfer, ET["transfer"], ET["withdrawal"])
    payee = np.where(transfer, new_payee, -1)
    own = _fill(rng, pop, acc, t, etype, np.round(amount, 2), np.full(n, -1), payee,
                channel=CH["app"], fraud=1, scen=SC["account_takeover"])  # fmt: skip
    auth = np.where(
        seq == 0,
        np.where(rng.random(n) < 0.8, AU["sms_otp"], AU["password"]),
        np.where(rng.random(n) < 0.6, AU["password"], AU["fingerprint"]),
    )
    taken = new_batch(
        n,
        t=t,
        acct=acc,
        etype=etype,
        amount=np.maximum(np.round(amount, 2), 1.0),
        channel=CH["app"],
        payee=payee,
        inst=a["inst"][acc, 0],
        device=device[owner],
        ip=ip[owner],
        lat=lat[owner] + rng.normal(0, 0.005, n),
        lon=lon[owner] + rng.normal(0, 0.005, n),
        auth=auth,
        fraud=1,
        scen=SC["account_takeover"],
    )
    s = scam[owner]
    return {key: np.where(s, own[key], taken[key]) for key in taken}


def _stolen_card(rng: np.random.Generator, pop: Population, k: int, proxies: np.ndarray) -> Batch:
    """A card used from an unfamiliar device at online shops, often big mainstream ones, for
    several times its usual amount; the fraudster is often in the victim's own city."""
    a = pop.a
    assert pop.popular is not None
    v, t0 = _victims(rng, pop, k, need_card=True)
    owner, seq = _expand(rng.integers(2, 7, k))
    n = len(owner)
    acc = v[owner]
    t = t0[owner] + _cum_gaps(rng, owner, seq, 2 * MINUTE, 90 * MINUTE)
    resale = rng.random(k) < 0.55
    cat = np.where(
        resale[owner],
        ONLINE_FRAUD_CATEGORIES[rng.integers(0, len(ONLINE_FRAUD_CATEGORIES), n)],
        MAINSTREAM_ONLINE[rng.integers(0, len(MAINSTREAM_ONLINE), n)],
    )
    uniform = pop.market.by_cat_online.pick(rng, cat)
    merchant = np.where(rng.random(n) < 0.7, pop.popular.pick(rng, cat), uniform)
    usual = 80 * a["spend"][acc]
    amount = np.clip(usual * np.exp(np.log(8) + 0.8 * rng.normal(size=n)), 30, 30_000)
    city, lat, lon = _elsewhere(rng, k)
    local = rng.random(k) < 0.45
    city = np.where(local, a["city"][v], city)
    lat = np.where(local, CITY_LAT[city] + rng.normal(0, 0.03, k), lat)
    lon = np.where(local, CITY_LON[city] + rng.normal(0, 0.03, k), lon)
    carrier = a["carrier0"] + city * CARRIER_PER_CITY + rng.integers(0, CARRIER_PER_CITY, k)
    ip = np.where(rng.random(k) < 0.5, proxies[rng.integers(0, len(proxies), k)], carrier)
    device = pop.alloc.take("device", k) + np.arange(k)
    u = rng.random(n)
    auth = np.where(u < 0.4, AU["sms_otp"], np.where(u < 0.85, AU["password"], AU["fingerprint"]))
    auth = np.where((amount < 200) & (rng.random(n) < 0.5), AU["none"], auth)
    return new_batch(
        n,
        t=t,
        acct=acc,
        etype=ET["payment"],
        amount=np.round(amount, 2),
        channel=np.where(rng.random(n) < 0.55, CH["web"], CH["app"]),
        merchant=merchant,
        inst=_card(pop, acc),
        device=device[owner],
        ip=ip[owner],
        lat=lat[owner],
        lon=lon[owner],
        auth=auth,
        fraud=1,
        scen=SC["stolen_card"],
    )


def _card_testing(rng: np.random.Generator, pop: Population, k: int, proxies: np.ndarray) -> Batch:
    """One device tries 1-3 cards: 5-12 payments of at most 2.00 at many shops, then a big one."""
    mk = pop.market
    cards = rng.integers(1, 4, k)
    dev_of_card, card_seq = _expand(cards)
    c = len(dev_of_card)
    v, t0 = _victims(rng, pop, c, need_card=True)
    t0 = t0[np.concatenate([[0], np.cumsum(cards)[:-1]])][dev_of_card] + card_seq * 25 * MINUTE
    size = rng.integers(5, 13, c) + 1  # small tests plus the big one
    owner, seq = _expand(size)
    n = len(owner)
    big = seq == size[owner] - 1
    t = t0[owner] + _cum_gaps(rng, owner, seq, 5, 90) + big * rng.integers(MINUTE, 10 * MINUTE, n)
    assert pop.popular is not None
    small_cat = rng.integers(0, N_CAT, n)
    small_m = np.where(
        rng.random(n) < 0.5, pop.popular.pick(rng, small_cat), mk.by_cat_online.pick(rng, small_cat)
    )
    big_cat = np.array([CAT["electronics"], CAT["luxury"], CAT["digital_goods"], CAT["fashion"]])[
        rng.integers(0, 4, n)
    ]
    merchant = np.where(big, pop.popular.pick(rng, big_cat), small_m)
    amount = np.where(
        big, np.exp(np.log(900) + 0.7 * rng.normal(size=n)), rng.uniform(0.01, 2.0, n)
    )
    city, lat, lon = _elsewhere(rng, k)
    carrier = pop.a["carrier0"] + city * CARRIER_PER_CITY + rng.integers(0, CARRIER_PER_CITY, k)
    ip = np.where(rng.random(k) < 0.5, proxies[rng.integers(0, len(proxies), k)], carrier)
    device = pop.alloc.take("device", k) + np.arange(k)
    dev = dev_of_card[owner]
    return new_batch(
        n,
        t=t,
        acct=v[owner],
        etype=ET["payment"],
        amount=np.maximum(np.round(amount, 2), 0.01),
        channel=np.where(rng.random(k) < 0.7, CH["web"], CH["app"])[dev],
        merchant=merchant,
        inst=_card(pop, v[owner]),
        device=device[dev],
        ip=ip[dev],
        lat=lat[dev],
        lon=lon[dev],
        auth=np.where(big & (rng.random(n) < 0.5), AU["sms_otp"], AU["none"]),
        fraud=1,
        scen=SC["card_testing"],
    )
