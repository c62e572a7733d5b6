"""The accounts and their habits: who they are, where they live, how, when and where they pay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import (
    CAT,
    CATEGORY_ONLINE,
    CATEGORY_TASTE,
    CITY_LAT,
    CITY_LON,
    CITY_WEIGHT,
    DAY,
    MEAN_DAILY_RATE,
    N_CITY,
    Calendar,
)
from .market import Market, Popular

N_FAV = 8
PROXY_POOL = 64
N_PAYEES = 6
FAV_CUM = np.cumsum(1 / np.arange(1, N_FAV + 1)) / np.sum(1 / np.arange(1, N_FAV + 1))
CARRIER_PER_CITY = 6
WIFI_PER_CITY = 20
# IP address kinds: (first octet, second octet base); the index inside a kind fills the rest.
IP_KINDS = {
    "carrier": (117, 136),
    "wifi": (101, 80),
    "proxy": (45, 32),
    "home": (183, 0),
    "farm": (58, 40),
}


class Allocator:
    """Hands out consecutive ids per universe (devices, IPs, instruments); remembers IP kinds."""

    def __init__(self) -> None:
        self.count = {"device": 0, "ip": 0, "instrument": 0}
        self.ip_ranges: list[tuple[str, int, int]] = []

    def take(self, universe: str, k: int, kind: str = "") -> int:
        first = self.count[universe]
        self.count[universe] += int(k)
        if universe == "ip":
            self.ip_ranges.append((kind, first, int(k)))
        return first

    def ip_strings(self) -> np.ndarray:
        out = np.empty(self.count["ip"], dtype=object)
        for kind, first, k in self.ip_ranges:
            a, b = IP_KINDS[kind]
            i = np.arange(k)
            out[first : first + k] = [
                f"{a}.{b + x // 65536}.{(x // 256) % 256}.{x % 256}" for x in (i + 1).tolist()
            ]
        return out


@dataclass
class Population:
    """All accounts as parallel arrays (index = account), plus the habits behaviour samples from."""

    n: int
    n_normal: int
    cal: Calendar
    market: Market
    alloc: Allocator
    a: dict[str, Any] = field(default_factory=dict)  # per-account arrays
    popular: Popular | None = None  # online merchants weighted by their customer base

    def __getitem__(self, name: str) -> Any:
        return self.a[name]


def _cum(w: np.ndarray) -> np.ndarray:
    w = np.maximum(w, 0)
    c = np.cumsum(w, axis=1)
    return c / np.maximum(c[:, -1:], 1e-12)


def build_population(
    rng: np.random.Generator, n: int, n_normal: int, cal: Calendar, market: Market
) -> Population:
    """Generic habits for every account; ring accounts are overridden later by rings.py."""
    al = Allocator()
    a: dict[str, Any] = {}
    z = rng.normal(0, 1, n)  # latent creditworthiness
    a["z"] = z
    a["role"] = np.zeros(n, np.int8)
    city = rng.choice(N_CITY, n, p=CITY_WEIGHT)
    a["city"] = city
    a["home_lat"] = (CITY_LAT[city] + rng.normal(0, 0.03, n)).round(5)
    a["home_lon"] = (CITY_LON[city] + rng.normal(0, 0.03, n)).round(5)
    # 85% opened before the period (tenure up to ~6 years, longer for the creditworthy).
    new = rng.random(n) < 0.15
    tenure = np.clip(rng.lognormal(np.log(500) + 0.25 * z, 0.9), 3, 2200) * DAY
    created = np.where(new, cal.start + rng.random(n) * (cal.end - cal.start), cal.start - tenure)
    a["created"] = created.astype(np.int64)
    a["kyc"] = np.clip(np.round(1.8 + 0.6 * z + rng.normal(0, 0.8, n)) - new, 0, 3).astype(np.int8)
    a["age"] = np.clip(np.round(36 + 5 * z + rng.normal(0, 10, n)), 18, 80).astype(np.int32)
    city_pay = 1 + 0.4 * (CITY_WEIGHT[city] / CITY_WEIGHT.max())
    a["income"] = np.round(city_pay * np.exp(np.log(6500) + 0.4 * z + rng.normal(0, 0.4, n)), -1)

    # Activity, rhythm and spending.
    a["rate"] = MEAN_DAILY_RATE * rng.lognormal(-0.32, 0.8, n)
    a["weekend"] = rng.uniform(0.7, 1.5, n)
    a["shift"] = np.clip(np.round(rng.normal(0, 1.3, n)), -3, 3).astype(np.int64)
    sz = 1 / (1 + np.exp(z))  # 0..1, higher for the less creditworthy
    a["type_cum"] = _cum(
        np.stack(
            [
                np.full(n, 0.80),
                rng.uniform(0.04, 0.14, n),
                rng.uniform(0.01, 0.05, n),
                0.03 + 0.08 * sz + rng.uniform(0, 0.02, n),
            ],
            axis=1,
        )
    )
    a["topup_scale"] = np.exp(np.log(300) - 1.0 * sz + rng.normal(0, 0.3, n))
    taste = rng.gamma(0.8, 1.0, (n, len(CATEGORY_TASTE))) * CATEGORY_TASTE
    a["cat_cum"] = _cum(taste)
    a["spend"] = np.exp(0.35 * np.log(a["income"] / 6500) + rng.normal(0, 0.25, n))
    a["p_fav"] = rng.uniform(0.55, 0.9, n)
    a["p_online"] = rng.uniform(0.5, 1.5, n)
    # Night owls who game and buy digital goods late: the genuine twin of night-time fraud.
    night = rng.random(n) < 0.08
    a["shift"] = np.where(night, rng.integers(3, 6, n), a["shift"])
    taste[night, CAT["digital_goods"]] *= 8
    taste[night, CAT["gaming"]] *= 8
    a["cat_cum"] = _cum(taste)
    a["night"] = night
    # Favourite merchants: drawn by taste, offline ones in the home city.
    fcat = (rng.random((n, N_FAV))[:, :, None] > a["cat_cum"][:, None, :]).sum(2)
    fcat = np.minimum(fcat, len(CATEGORY_TASTE) - 1)
    fon = rng.random((n, N_FAV)) < np.minimum(CATEGORY_ONLINE[fcat] * a["p_online"][:, None], 1)
    fav = market.pick(rng, fcat.ravel(), np.repeat(city, N_FAV), fon.ravel())
    a["fav"] = fav.reshape(n, N_FAV).astype(np.int32)

    # Devices: 1-3, the first is the phone; some accounts change phone during the period.
    ndev = rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1])
    dev = np.full((n, 3), -1, np.int64)
    first = al.take("device", ndev.sum())
    off = np.concatenate([[0], np.cumsum(ndev)[:-1]]) + first
    for k in range(3):
        dev[:, k] = np.where(ndev > k, off + k, -1)
    a["dev"] = dev
    a["dev_cum"] = _cum(np.where(dev >= 0, np.array([0.85, 0.11, 0.04]), 0))
    switch = rng.random(n) < 0.1
    a["new_dev"] = np.where(switch, al.take("device", n) + np.arange(n), -1)
    switch_t = cal.start + (rng.random(n) * (cal.end - cal.start)).astype(np.int64)
    a["new_dev_t"] = np.where(switch, switch_t, np.iinfo(np.int64).max)

    # IPs: carrier NAT per city (shared by many), public wifi per city, home wifi per household.
    a["carrier0"] = al.take("ip", N_CITY * CARRIER_PER_CITY, "carrier")
    a["wifi0"] = al.take("ip", N_CITY * WIFI_PER_CITY, "wifi")
    hh = np.cumsum(rng.random(n) < 0.6) - 1  # a new household starts with prob 0.6
    has_home = rng.random(n) < 0.85
    a["home_ip"] = np.where(has_home, al.take("ip", hh[-1] + 1, "home") + hh, -1)
    a["carrier_ip"] = (
        a["carrier0"] + city[:, None] * CARRIER_PER_CITY + rng.integers(0, CARRIER_PER_CITY, (n, 2))
    )
    a["p_home"] = np.where(has_home, rng.uniform(0.3, 0.8, n), 0.0)
    # Shared family devices: in some households everybody also pays from one tablet.
    tablet_hh = rng.random(hh[-1] + 1) < 0.12
    tablet0 = al.take("device", hh[-1] + 1)
    shared = has_home & tablet_hh[hh] & (rng.random(n) < 0.8)
    a["dev"][:, 2] = np.where(shared, tablet0 + hh, a["dev"][:, 2])
    w_dev = np.where(a["dev"] >= 0, np.array([0.85, 0.11, 0.04]), 0)
    w_dev[:, 2] = np.where(shared, 0.2, w_dev[:, 2])
    a["dev_cum"] = _cum(w_dev)
    # Commercial VPNs: a few customers often appear from the same exit IPs fraudsters rent.
    a["proxy0"] = al.take("ip", PROXY_POOL + n // 100, "proxy")
    a["n_proxy"] = PROXY_POOL + n // 100
    a["p_vpn"] = np.where(rng.random(n) < 0.04, rng.uniform(0.2, 0.7, n), 0.0)

    # Usual payees: a small circle, mostly in the same city (neighbours in index order).
    npay = rng.integers(1, N_PAYEES + 1, n)
    pay = (np.arange(n)[:, None] + rng.integers(1, 40, (n, N_PAYEES))) % max(n_normal, 2)
    a["payees"], a["n_payees"] = pay, npay

    # Instruments: slot k has funding source k (balance, debit, credit card, credit line).
    has = np.stack(
        [
            np.ones(n, bool),
            rng.random(n) < 0.9,
            rng.random(n) < 0.2 + 0.25 * (1 - sz),
            np.zeros(n, bool),  # credit lines are assigned by credit.assign_lines
        ],
        axis=1,
    )
    inst = np.full((n, 4), -1, np.int64)
    flat = np.flatnonzero(has.ravel())
    inst.ravel()[flat] = al.take("instrument", len(flat)) + np.arange(len(flat))
    a["inst"] = inst
    a["line_use"] = np.clip(0.05 + 0.5 * sz + rng.normal(0, 0.1, n), 0.02, 0.9)
    a["p_qr"] = rng.uniform(0.3, 0.95, n)
    a["p_app"] = rng.uniform(0.35, 0.98, n)
    a["p_none"] = rng.uniform(0.4, 0.95, n)
    a["auth_pref"] = rng.choice([0, 1, 2], n, p=[0.2, 0.5, 0.3])  # password/fingerprint/face

    # Travel: a trip of 2-7 days to another city for ~1 in 6 accounts per 60 days.
    trip = rng.random(n) < min(0.9, cal.days / 360)
    a["trip_city"] = np.where(trip, (city + rng.integers(1, N_CITY, n)) % N_CITY, -1)
    ts = cal.start + rng.integers(0, cal.days, n) * DAY
    a["trip_start"] = np.where(trip, ts, np.iinfo(np.int64).max)
    a["trip_end"] = np.where(trip, ts + rng.integers(2, 8, n) * DAY, np.iinfo(np.int64).max)

    # Bills: up to 3 monthly utilities; regularity tracks creditworthiness.
    nb = rng.choice([0, 1, 2, 3], n, p=[0.25, 0.35, 0.25, 0.15])
    util = market.by_cat_online.pick(rng, np.full(n * 3, 3)).reshape(n, 3)
    a["bill_m"] = np.where(np.arange(3) < nb[:, None], util, -1)
    a["bill_dom"] = rng.integers(1, 29, (n, 3))
    a["bill_amt"] = np.exp(np.log(150) + rng.normal(0, 0.6, (n, 3)))
    a["bill_reg"] = 1 / (1 + np.exp(-(1.4 * z + 1.3 + rng.normal(0, 0.5, n))))
    a["app_time"] = np.full(n, -1, np.int64)  # credit applications: credit.assign_lines
    a["requested"] = np.zeros(n)

    # One-off look-alikes: a big purchase (new phone, a bag), a small shop paid by P2P
    # transfer, a personal celebration with red packets, a welcome-bonus first payment.
    span = cal.end - cal.start
    a["big_t"] = np.where(
        rng.random(n) < 0.15, cal.start + (rng.random(n) * span).astype(np.int64), -1
    )
    a["shop"] = rng.random(n) < 0.008
    a["party_t"] = np.where(
        rng.random(n) < 0.06, cal.start + (rng.random(n) * span).astype(np.int64), -1
    )
    a["welcome"] = (created >= cal.start) & (rng.random(n) < 0.35)

    w = np.diff(np.concatenate([[0], FAV_CUM]))
    traffic = a["rate"][:, None] * a["p_fav"][:, None] * w[None, :]
    per_m = np.bincount(a["fav"].ravel(), traffic.ravel(), minlength=market.size)
    pop = Population(n=n, n_normal=n_normal, cal=cal, market=market, alloc=al, a=a)
    pop.popular = Popular.build(market, per_m + 0.02)
    return pop
