"""Ordinary (good) behaviour of a chunk of accounts, vectorised over accounts and events.

Includes the legitimate look-alikes: new phones, travel, a big first purchase, festival sprees.
"""

from __future__ import annotations

import numpy as np

from .config import (
    AU,
    CAT,
    CATEGORY_ONLINE,
    CH,
    CITY_LAT,
    CITY_LON,
    DAY,
    ET,
    FESTIVAL_CATEGORIES,
    HOUR,
    HOURLY_WEEKDAY,
    HOURLY_WEEKEND,
    SC,
)
from .events import Batch, concat, new_batch
from .population import CARRIER_PER_CITY, FAV_CUM, N_FAV, WIFI_PER_CITY, Population

CUM_WEEKDAY = np.cumsum(HOURLY_WEEKDAY) / HOURLY_WEEKDAY.sum()
CUM_WEEKEND = np.cumsum(HOURLY_WEEKEND) / HOURLY_WEEKEND.sum()
PAY_SLOT_WEIGHT = np.array([0.35, 0.35, 0.3, 1.2])  # last one is scaled by line_use
SMALL_AMOUNT = 200.0  # below this, many accounts pay without authentication
AUTH_PREF = np.array([AU["password"], AU["fingerprint"], AU["face"]], np.int8)
COMPROMISED_SHARE = 0.85
MICRO_CATEGORIES = np.array(
    [CAT["transport"], CAT["digital_goods"], CAT["gaming"]]
)  # share of a compromised terminal's payments that are fraud


def _pick_row(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """Index drawn from each row's cumulative distribution."""
    return np.minimum((rng.random(len(cum))[:, None] > cum).sum(1), cum.shape[1] - 1)


def _device(
    rng: np.random.Generator, pop: Population, acc: np.ndarray, t: np.ndarray
) -> np.ndarray:
    a = pop.a
    slot = _pick_row(rng, a["dev_cum"][acc])
    dev = a["dev"][acc, slot]
    return np.where((slot == 0) & (t >= a["new_dev_t"][acc]), a["new_dev"][acc], dev)


def _auth(
    rng: np.random.Generator, pop: Population, acc: np.ndarray, t: np.ndarray, small: np.ndarray
) -> np.ndarray:
    a = pop.a
    fresh = (t >= a["new_dev_t"][acc]) & (t < a["new_dev_t"][acc] + 3 * DAY)
    u = rng.random(len(acc))
    auth = np.where(u < np.where(fresh, 0.4, 0.06), AU["sms_otp"], AUTH_PREF[a["auth_pref"][acc]])
    return np.where(small & (rng.random(len(acc)) < a["p_none"][acc]), AU["none"], auth)


def _where(pop: Population, rng: np.random.Generator, acc: np.ndarray, t: np.ndarray) -> tuple:
    """Current city, IP and location: home, or the trip city (new IPs) while travelling."""
    a = pop.a
    n = len(acc)
    trav = (t >= a["trip_start"][acc]) & (t < a["trip_end"][acc])
    city = np.where(trav, a["trip_city"][acc], a["city"][acc])
    home = (rng.random(n) < a["p_home"][acc]) & (a["home_ip"][acc] >= 0)
    ip = np.where(home, a["home_ip"][acc], a["carrier_ip"][acc, rng.integers(0, 2, n)])
    wifi = a["wifi0"] + city * WIFI_PER_CITY + rng.integers(0, WIFI_PER_CITY, n)
    carrier = a["carrier0"] + city * CARRIER_PER_CITY + rng.integers(0, CARRIER_PER_CITY, n)
    ip = np.where(trav, np.where(rng.random(n) < 0.5, wifi, carrier), ip)
    lat = np.where(
        trav, CITY_LAT[city] + rng.normal(0, 0.03, n), a["home_lat"][acc] + rng.normal(0, 0.01, n)
    )
    lon = np.where(
        trav, CITY_LON[city] + rng.normal(0, 0.03, n), a["home_lon"][acc] + rng.normal(0, 0.01, n)
    )
    return trav, city, ip, lat, lon


def _daily(
    rng: np.random.Generator, pop: Population, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson event counts per account-day (activity x weekday x payday x festival), then times."""
    a, cal = pop.a, pop.cal
    idx = np.arange(lo, hi)
    active = (cal.day_start + DAY)[None, :] > a["created"][idx, None]
    wk = np.where(cal.weekend[None, :], a["weekend"][idx, None], 1.0)
    cnt = rng.poisson(a["rate"][idx, None] * cal.factor[None, :] * wk * active).ravel()
    acc = np.repeat(np.repeat(idx, cal.days), cnt)
    day = np.repeat(np.tile(np.arange(cal.days), len(idx)), cnt)
    u = rng.random(len(acc))
    h = np.where(cal.weekend[day], np.searchsorted(CUM_WEEKEND, u), np.searchsorted(CUM_WEEKDAY, u))
    hour = (np.minimum(h, 23) + a["shift"][acc]) % 24
    t = cal.day_start[day] + hour * HOUR + rng.integers(0, HOUR, len(acc))
    created = a["created"][acc]
    t = np.where(t < created, created + rng.integers(60, 4 * HOUR, len(acc)), t)
    return acc, np.minimum(t, cal.end - 1)


def _ordinary(rng: np.random.Generator, pop: Population, lo: int, hi: int) -> Batch:
    a, cal, mk = pop.a, pop.cal, pop.market
    acc, t = _daily(rng, pop, lo, hi)
    n = len(acc)
    etype = _pick_row(rng, a["type_cum"][acc]).astype(np.int8)
    trav, city, ip, lat, lon = _where(pop, rng, acc, t)
    day = (t - cal.start) // DAY
    fest = cal.festival[day] > 0

    # Merchant: a favourite (Zipf over 8), else one of a liked category near where they are.
    m_fav = a["fav"][acc, np.minimum(np.searchsorted(FAV_CUM, rng.random(n)), N_FAV - 1)]
    cat = _pick_row(rng, a["cat_cum"][acc])
    spree = fest & (rng.random(n) < 0.35)
    cat = np.where(spree, FESTIVAL_CATEGORIES[rng.integers(0, len(FESTIVAL_CATEGORIES), n)], cat)
    online = spree | (rng.random(n) < CATEGORY_ONLINE[cat] * a["p_online"][acc])
    m_rand = mk.pick(rng, cat, city, online)
    use_fav = (rng.random(n) < a["p_fav"][acc]) & ~spree & ~trav
    pay = etype == ET["payment"]
    merchant = np.where(pay, np.where(use_fav, m_fav, m_rand), -1)
    m = np.maximum(merchant, 0)
    on = mk.online[m]

    spend = np.log(a["spend"][acc])
    festive = np.where(spree, 1.25, 1.0)
    amount = np.select(
        [pay, etype == ET["transfer"], etype == ET["withdrawal"]],
        [
            np.exp(mk.mu[m] + spend + mk.sigma[m] * rng.normal(size=n)) * festive,
            np.exp(np.log(200) + 0.5 * spend + 0.9 * rng.normal(size=n)),
            np.exp(np.log(500) + spend + 0.7 * rng.normal(size=n)),
        ],
        a["topup_scale"][acc] * np.exp(0.5 * rng.normal(size=n)),
    )

    # Micro payments (bus fares, in-app items): the genuine twin of a card-testing probe.
    micro = pay & np.isin(mk.category[m], MICRO_CATEGORIES) & (rng.random(n) < 0.2)
    amount = np.where(micro, rng.uniform(0.5, 5.0, n), amount)

    # Payees: the usual circle, sometimes somebody new.
    slot = (rng.random(n) * a["n_payees"][acc]).astype(np.int64)
    payee = a["payees"][acc, slot]
    newp = rng.random(n) < 0.05
    payee = np.where(newp, rng.integers(0, pop.n_normal, n), payee)
    payee = np.where(
        etype == ET["transfer"], np.where(payee == acc, (acc + 1) % pop.n_normal, payee), -1
    )

    # Instrument: payments by habit (the credit line only once granted), others fixed.
    inst = a["inst"][acc]
    w = np.where(inst >= 0, PAY_SLOT_WEIGHT, 0.0)
    w[:, 3] *= a["line_use"][acc] * (t >= a["line_from"][acc])
    cum = np.cumsum(w, 1)
    pslot = _pick_row(rng, cum / cum[:, -1:])
    has_debit = inst[:, 1] >= 0
    slot = np.select(
        [pay, etype == ET["transfer"], etype == ET["withdrawal"]],
        [pslot, np.where(has_debit & (rng.random(n) < 0.15), 1, 0), np.zeros(n, np.int64)],
        np.where(has_debit, 1, np.where(inst[:, 2] >= 0, 2, 0)),
    )
    channel = np.where(
        pay & on,
        np.where(rng.random(n) < a["p_app"][acc], CH["app"], CH["web"]),
        np.where(rng.random(n) < a["p_qr"][acc], CH["qr"], CH["nfc"]),
    )
    channel = np.where(pay, channel, np.where(rng.random(n) < 0.95, CH["app"], CH["web"]))
    offline = pay & ~on
    b = new_batch(
        n,
        t=t,
        acct=acc,
        etype=etype,
        amount=amount,
        channel=channel,
        merchant=merchant,
        payee=payee,
        inst=inst[np.arange(n), slot],
        device=_device(rng, pop, acc, t),
        ip=ip,
        lat=np.where(offline, mk.lat[m], lat),
        lon=np.where(offline, mk.lon[m], lon),
        auth=_auth(rng, pop, acc, t, pay & (amount < SMALL_AMOUNT)),
    )
    _big_first_purchase(rng, pop, b)
    return b


def _big_first_purchase(rng: np.random.Generator, pop: Population, b: Batch) -> None:
    """A quarter of accounts opened during the period start with a big electronics purchase."""
    pay = np.flatnonzero(b["etype"] == ET["payment"])
    order = pay[np.lexsort((b["t"][pay], b["acct"][pay]))]
    _, first = np.unique(b["acct"][order], return_index=True)
    ev = order[first]
    ev = ev[(pop.a["created"][b["acct"][ev]] >= pop.cal.start) & (rng.random(len(ev)) < 0.25)]
    b["merchant"][ev] = pop.market.by_cat_online.pick(rng, np.full(len(ev), CAT["electronics"]))
    b["amount"][ev] = np.exp(np.log(2500) + 0.5 * rng.normal(size=len(ev)))
    b["channel"][ev] = CH["app"]


def _bills(rng: np.random.Generator, pop: Population, lo: int, hi: int) -> Batch:
    """Monthly utility bills: regular payers pay on the due day, irregular ones late or never."""
    a, cal = pop.a, pop.cal
    first = np.datetime64(cal.start, "s").astype("datetime64[M]")
    last = np.datetime64(cal.end, "s").astype("datetime64[M]")
    months = np.arange(first, last + 1).astype("datetime64[s]").astype(np.int64)
    idx = np.arange(lo, hi)
    shape = (len(idx), 3, len(months))
    reg = a["bill_reg"][idx, None, None]
    late = np.where(rng.random(shape) < reg, rng.integers(-2, 2, shape), rng.integers(1, 25, shape))
    t = (
        months[None, None, :]
        + (a["bill_dom"][idx, :, None] - 1 + late) * DAY
        + rng.integers(8 * HOUR, 22 * HOUR, shape)
    )
    ok = (a["bill_m"][idx, :, None] >= 0) & (rng.random(shape) < 0.3 + 0.7 * reg)
    ok &= (t >= cal.start) & (t < cal.end) & (t >= a["created"][idx, None, None])
    acc = np.broadcast_to(idx[:, None, None], shape)[ok]
    merchant = np.broadcast_to(a["bill_m"][idx, :, None], shape)[ok]
    amt = np.broadcast_to(a["bill_amt"][idx, :, None], shape)[ok] * rng.uniform(0.85, 1.2, ok.sum())
    t = t[ok]
    n = len(acc)
    inst = a["inst"][acc]
    _, _, ip, lat, lon = _where(pop, rng, acc, t)
    return new_batch(
        n,
        t=t,
        acct=acc,
        etype=ET["bill_pay"],
        amount=amt,
        channel=CH["app"],
        merchant=merchant,
        inst=np.where(inst[:, 1] >= 0, inst[:, 1], inst[:, 0]),
        device=_device(rng, pop, acc, t),
        ip=ip,
        lat=lat,
        lon=lon,
        auth=_auth(rng, pop, acc, t, np.zeros(n, bool)),
    )


def legit_chunk(
    rng: np.random.Generator,
    pop: Population,
    lo: int,
    hi: int,
    cm_start: np.ndarray,
    cm_end: np.ndarray,
) -> Batch:
    """Accounts [lo, hi): ordinary events and bills; payments at a compromised terminal during
    its window become fraud (skimmed, slightly inflated amounts)."""
    b = concat([_ordinary(rng, pop, lo, hi), _bills(rng, pop, lo, hi)])
    m = np.maximum(b["merchant"], 0)
    hit = (
        (b["etype"] == ET["payment"])
        & (b["merchant"] >= 0)
        & (b["t"] >= cm_start[m])
        & (b["t"] < cm_end[m])
        & (rng.random(len(m)) < COMPROMISED_SHARE)
    )
    b["fraud"][hit] = 1
    b["scen"][hit] = SC["compromised_merchant"]
    b["amount"][hit] *= rng.uniform(1.0, 1.3, hit.sum())
    b["amount"] = np.maximum(np.round(b["amount"], 2), 0.01)
    return b
