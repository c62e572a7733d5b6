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
    MINUTE,
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
    vpn = a["proxy0"] + rng.integers(0, a["n_proxy"], n)
    ip = np.where(rng.random(n) < a["p_vpn"][acc], vpn, ip)
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
    payee = np.where(etype == ET["transfer"], payee, -1)
    # People send and top up round sums (500, 1 000) far more often than odd ones.
    rnd = (etype == ET["transfer"]) | (etype == ET["top_up"])
    rnd &= (amount >= 80) & (rng.random(n) < 0.55)
    amount = np.where(rnd, np.maximum(np.round(amount, -2), 100), amount)
    return _fill(rng, pop, acc, t, etype, amount, merchant, payee, trav=(trav, city, ip, lat, lon))


def _fill(
    rng: np.random.Generator,
    pop: Population,
    acc: np.ndarray,
    t: np.ndarray,
    etype: np.ndarray | int,
    amount: np.ndarray,
    merchant: np.ndarray,
    payee: np.ndarray,
    trav: tuple | None = None,
    **over: np.ndarray | int,
) -> Batch:
    """The rest of an ordinary event by the account's habits: instrument, channel, device, IP,
    location and authentication (keyword arguments override)."""
    a, mk = pop.a, pop.market
    n = len(acc)
    etype = np.broadcast_to(np.asarray(etype), (n,))
    pay = etype == ET["payment"]
    _, _, ip, lat, lon = trav if trav is not None else _where(pop, rng, acc, t)
    m = np.maximum(merchant, 0)
    on = mk.online[m]
    payee = np.where((payee == acc) & (payee >= 0), (acc + 1) % pop.n_normal, payee)
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
    cols = {
        "t": t,
        "acct": acc,
        "etype": etype,
        "amount": amount,
        "channel": channel,
        "merchant": merchant,
        "payee": payee,
        "inst": inst[np.arange(n), slot],
        "device": _device(rng, pop, acc, t),
        "ip": ip,
        "lat": np.where(offline, mk.lat[m], lat),
        "lon": np.where(offline, mk.lon[m], lon),
        "auth": _auth(rng, pop, acc, t, pay & (amount < SMALL_AMOUNT)),
    }
    cols.update(over)
    return new_batch(n, **cols)


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
    b = _ordinary(rng, pop, lo, hi)
    _big_first_purchase(rng, pop, b)
    b = concat([b, _bills(rng, pop, lo, hi), _look_alikes(rng, pop, lo, hi)])
    b = {k: v[b["t"] < pop.cal.end] for k, v in b.items()}
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


def _expand(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner index and position inside the owner's burst for each event."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    seq = np.arange(len(owner)) - np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return owner, seq


def _gaps(rng: np.random.Generator, owner: np.ndarray, seq: np.ndarray, lo: int, hi: int):
    """Offsets from the burst start: sums of random gaps, zero for the first event."""
    gaps = np.where(seq == 0, 0, rng.integers(lo, hi, len(owner)))
    total = np.cumsum(gaps)
    return total - np.repeat(total[np.flatnonzero(seq == 0)], np.bincount(owner))


def _popular(rng: np.random.Generator, pop: Population, cats: np.ndarray, n: int) -> np.ndarray:
    assert pop.popular is not None
    return pop.popular.pick(rng, cats[rng.integers(0, len(cats), n)])


def _ticket(rng: np.random.Generator, pop: Population, m: np.ndarray, acc: np.ndarray):
    mk = pop.market
    return np.exp(mk.mu[m] + np.log(pop.a["spend"][acc]) + mk.sigma[m] * rng.normal(size=len(m)))


def _look_alikes(rng: np.random.Generator, pop: Population, lo: int, hi: int) -> Batch:
    """Innocent events that carry fraud's traces (docs/simulator.md, "Legitimate look-alikes")."""
    idx = np.arange(lo, hi)
    idx = idx[pop.a["role"][idx] == 0]
    return concat(
        [
            _new_phone_burst(rng, pop, idx),
            _big_purchase(rng, pop, idx),
            _welcome(rng, pop, idx),
            _micro_sessions(rng, pop, idx),
            _midnight_spree(rng, pop, idx),
            _line_purchase(rng, pop, idx),
            _shop_takings(rng, pop, idx),
            _parties(rng, pop, idx),
        ]
    )


def _new_phone_burst(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Setting up a new phone: a password reset by SMS, then a burst of top-ups, transfers
    (sometimes to somebody new) and app purchases within the hour."""
    a = pop.a
    acc0 = idx[a["new_dev_t"][idx] < pop.cal.end]
    owner, seq = _expand(rng.integers(2, 7, len(acc0)))
    acc, n = acc0[owner], len(owner)
    t = a["new_dev_t"][acc] + rng.integers(0, HOUR, n) * (seq == 0)
    t = t + _gaps(rng, owner, seq, MINUTE, 12 * MINUTE)
    etype = np.array([ET["payment"], ET["transfer"], ET["top_up"], ET["withdrawal"]])[
        np.minimum((rng.random(n)[:, None] > np.array([0.45, 0.8, 0.95])).sum(1), 3)
    ]
    m = _popular(rng, pop, FESTIVAL_CATEGORIES, n)
    amount = np.where(
        etype == ET["payment"],
        _ticket(rng, pop, m, acc) * rng.uniform(1, 4, n),
        np.round(a["income"][acc] * rng.uniform(0.05, 0.6, n), -2) + 100,
    )
    slot = (rng.random(n) * a["n_payees"][acc]).astype(np.int64)
    payee = np.where(rng.random(n) < 0.3, rng.integers(0, pop.n_normal, n), a["payees"][acc, slot])
    return _fill(
        rng, pop, acc, t, etype, amount,
        np.where(etype == ET["payment"], m, -1), np.where(etype == ET["transfer"], payee, -1),
        device=a["new_dev"][acc],
        auth=np.where(seq == 0, AU["sms_otp"], AUTH_PREF[a["auth_pref"][acc]]),
    )  # fmt: skip


def _big_purchase(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Once in a while a phone, a laptop or a bag: several times the usual ticket, online at a
    big shop, sometimes with accessories minutes later."""
    a = pop.a
    acc0 = idx[(a["big_t"][idx] >= 0) & (a["big_t"][idx] >= a["created"][idx])]
    owner, seq = _expand(np.where(rng.random(len(acc0)) < 0.4, rng.integers(2, 4, len(acc0)), 1))
    acc, n = acc0[owner], len(owner)
    t = a["big_t"][acc] + _gaps(rng, owner, seq, 2 * MINUTE, 25 * MINUTE)
    cats = np.array([CAT["electronics"], CAT["electronics"], CAT["luxury"], CAT["fashion"]])
    m = _popular(rng, pop, cats, n)
    amount = np.exp(np.log(3500) + 0.6 * rng.normal(size=n)) * np.where(seq == 0, 1, 0.15)
    auth = np.where(rng.random(n) < 0.3, AU["sms_otp"], AUTH_PREF[a["auth_pref"][acc]])
    return _fill(rng, pop, acc, t, ET["payment"], amount, m, np.full(n, -1), auth=auth)


def _welcome(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Genuine new customers claiming the new-user bonus with a tiny first payment."""
    a = pop.a
    acc = idx[a["welcome"][idx]]
    n = len(acc)
    t = a["created"][acc] + rng.integers(5 * MINUTE, 3 * HOUR, n)
    cats = np.array([CAT["digital_goods"], CAT["gaming"], CAT["grocery"], CAT["restaurant"]])
    amount = np.where(rng.random(n) < 0.5, rng.uniform(0.01, 1.0, n), rng.uniform(1.0, 30.0, n))
    auth = np.where(rng.random(n) < 0.6, AU["none"], AU["password"])
    m = _popular(rng, pop, cats, n)
    return _fill(rng, pop, acc, t, ET["payment"], amount, m, np.full(n, -1), auth=auth)


def _micro_sessions(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Gaming sessions: runs of in-app items of at most 2.00 within minutes (card-test twin)."""
    a, cal = pop.a, pop.cal
    gamer = idx[a["night"][idx] | (rng.random(len(idx)) < 0.03)]
    k = rng.poisson(1.2 * cal.days / 120, len(gamer))
    sess = np.repeat(gamer, k)
    start = np.maximum(a["created"][sess], cal.start)
    t0 = start + (rng.random(len(sess)) * (cal.end - start)).astype(np.int64)
    t0 = t0 - t0 % DAY + ((20 + a["shift"][sess] + rng.integers(0, 5, len(sess))) % 24) * HOUR
    owner, seq = _expand(rng.integers(3, 10, len(sess)))
    acc, n = sess[owner], len(owner)
    t = np.maximum(t0[owner], a["created"][acc]) + _gaps(rng, owner, seq, 20, 4 * MINUTE)
    cats = np.array([CAT["gaming"], CAT["digital_goods"]])
    home_m = _popular(rng, pop, cats, len(sess))
    m = np.where(rng.random(n) < 0.7, home_m[owner], _popular(rng, pop, cats, n))
    amount = rng.choice(np.array([0.1, 0.5, 0.6, 1.0, 1.0, 1.5, 2.0, 3.0, 6.0]), n)
    return _fill(rng, pop, acc, t, ET["payment"], amount, m, np.full(n, -1), auth=AU["none"])


def _midnight_spree(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """When a festival opens at midnight, a fifth of customers buy several things in minutes."""
    a, cal = pop.a, pop.cal
    days = np.flatnonzero(cal.festival >= 2.0)
    if len(days) == 0 or len(idx) == 0:
        return new_batch(0)
    acc0 = np.repeat(idx, len(days))
    day = np.tile(days, len(idx))
    keep = (rng.random(len(acc0)) < 0.2) & (a["created"][acc0] < cal.day_start[day])
    acc0, day = acc0[keep], day[keep]
    owner, seq = _expand(rng.integers(2, 7, len(acc0)))
    acc, n = acc0[owner], len(owner)
    t = cal.day_start[day][owner] + rng.integers(0, 40 * MINUTE, len(acc0))[owner]
    t = t + _gaps(rng, owner, seq, 30, 8 * MINUTE)
    m = _popular(rng, pop, FESTIVAL_CATEGORIES, n)
    amount = _ticket(rng, pop, m, acc) * rng.uniform(1.2, 4, n)
    return _fill(rng, pop, acc, t, ET["payment"], amount, m, np.full(n, -1))


def _line_purchase(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """A fresh pay-later line used at once for one big purchase (the honest cash-out twin)."""
    a = pop.a
    acc = idx[(a["app_time"][idx] >= 0) & (rng.random(len(idx)) < 0.35)]
    n = len(acc)
    t = a["app_time"][acc] + rng.integers(15 * MINUTE, 3 * DAY, n)
    cats = np.array([CAT["electronics"], CAT["luxury"], CAT["travel"], CAT["fashion"]])
    cat = cats[rng.integers(0, len(cats), n)]
    online = rng.random(n) < 0.6
    m = np.where(online, pop.popular.pick(rng, cat) if pop.popular else -1,
                 pop.market.pick(rng, cat, a["city"][acc], online))  # fmt: skip
    amount = a["credit_limit"][acc] * rng.uniform(0.3, 0.95, n)
    amount = np.where(rng.random(n) < 0.35, np.maximum(np.round(amount, -2), 100), amount)
    return _fill(rng, pop, acc, t, ET["payment"], amount, m, np.full(n, -1),
                 inst=a["inst"][acc, 3])  # fmt: skip


def _shop_takings(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Small shop owners paid by P2P transfer from many customers, who withdraw the takings,
    sometimes minutes after a lunch rush (the mule twin)."""
    a, cal = pop.a, pop.cal
    shops = idx[a["shop"][idx]]
    active = cal.day_start[None, :] >= a["created"][shops, None]
    cnt = rng.poisson(6.0 * cal.factor[None, :] * active)
    shop = np.repeat(np.repeat(shops, cal.days), cnt.ravel())
    day = np.repeat(np.tile(np.arange(cal.days), len(shops)), cnt.ravel())
    n = len(shop)
    rush = rng.random(n) < 0.6
    hour = np.where(rush, 12 + a["shift"][shop] % 2, rng.integers(8, 21, n))
    t = cal.day_start[day] + hour * HOUR + rng.integers(0, np.where(rush, 50, 60) * MINUTE, n)
    payer = (shop + rng.integers(1, 300, n)) % pop.n_normal
    amount = np.round(np.exp(np.log(45) + 0.7 * rng.normal(size=n)), 1)
    inflow = _fill(rng, pop, payer, t, ET["transfer"], amount, np.full(n, -1), shop)
    # One withdrawal per shop-day: right after the last payment of the day or in the evening.
    key = shop.astype(np.int64) * cal.days + day
    uk = np.unique(key)
    tot = np.bincount(np.searchsorted(uk, key), amount, minlength=len(uk))
    last = np.zeros(len(uk), np.int64)
    np.maximum.at(last, np.searchsorted(uk, key), t)
    w_acc = (uk // cal.days).astype(np.int64)
    soon = rng.random(len(uk)) < 0.3
    evening = np.maximum(last, cal.day_start[uk % cal.days] + 21 * HOUR)
    w_t = np.where(
        soon,
        last + rng.integers(2 * MINUTE, 15 * MINUTE, len(uk)),
        evening + rng.integers(0, 2 * HOUR, len(uk)),
    )
    out = _fill(rng, pop, w_acc, w_t, ET["withdrawal"], tot * rng.uniform(0.85, 1.0, len(uk)),
                np.full(len(uk), -1), np.full(len(uk), -1))  # fmt: skip
    return concat([inflow, out])


RED_PACKET_CHOICES = np.array([6.66, 8.88, 16.8, 18.88, 52.0, 66.0, 88.0, 88.88, 100, 168, 200])


def _parties(rng: np.random.Generator, pop: Population, idx: np.ndarray) -> Batch:
    """Holidays and celebrations: red packets sent to many payees within minutes, and gift
    money from many guests to the host, who moves part of it on soon after (mule twins)."""
    a, cal = pop.a, pop.cal
    hol = np.flatnonzero(cal.red_packet > 0)
    acc_h = np.repeat(idx, len(hol))
    day_h = np.tile(hol, len(idx))
    keep = rng.random(len(acc_h)) < cal.red_packet[day_h]
    t_h = cal.day_start[day_h[keep]] + rng.integers(9 * HOUR, 23 * HOUR, int(keep.sum()))
    host = idx[a["party_t"][idx] >= 0]
    senders = np.concatenate([acc_h[keep], host])
    t0 = np.concatenate([t_h, a["party_t"][host]])
    ok = t0 > a["created"][senders]
    senders, t0 = senders[ok], t0[ok]
    owner, seq = _expand(rng.integers(5, 16, len(senders)))
    acc, n = senders[owner], len(owner)
    t = t0[owner] + _gaps(rng, owner, seq, 10, 3 * MINUTE)
    payee = (acc + rng.integers(1, 80, n)) % pop.n_normal
    amount = rng.choice(RED_PACKET_CHOICES, n)
    sent = _fill(rng, pop, acc, t, ET["transfer"], amount, np.full(n, -1), payee)
    # Gift money: guests send round sums to half of the hosts; a third move it on quickly.
    gh = host[(rng.random(len(host)) < 0.5) & (a["party_t"][host] > a["created"][host])]
    owner, seq = _expand(rng.integers(5, 20, len(gh)))
    g_host, g = gh[owner], len(owner)
    g_t = a["party_t"][g_host] + rng.integers(0, 90 * MINUTE, g)
    guest = (g_host + rng.integers(1, 200, g)) % pop.n_normal
    gift = rng.choice(np.array([200.0, 300, 500, 600, 800, 1000, 2000]), g)
    gifts = _fill(rng, pop, guest, g_t, ET["transfer"], gift, np.full(g, -1), g_host)
    move = gh[rng.random(len(gh)) < 0.35]
    total = np.bincount(np.searchsorted(gh, g_host), gift, minlength=len(gh))
    tot = total[np.searchsorted(gh, move)]
    m_t = a["party_t"][move] + 90 * MINUTE + rng.integers(MINUTE, 20 * MINUTE, len(move))
    wd = rng.random(len(move)) < 0.5
    slot = (rng.random(len(move)) * a["n_payees"][move]).astype(np.int64)
    onward = _fill(
        rng, pop, move, m_t, np.where(wd, ET["withdrawal"], ET["transfer"]),
        np.round(tot * rng.uniform(0.5, 1.0, len(move)), -2) + 100, np.full(len(move), -1),
        np.where(wd, -1, a["payees"][move, slot]),
    )  # fmt: skip
    return concat([sent, gifts, onward])
