"""Merchants (category, city, ticket size) and fast lookup of merchants by city and category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import (
    CATEGORY_ONLINE,
    CATEGORY_TICKET,
    CATEGORY_WEIGHT,
    CITY_LAT,
    CITY_LON,
    CITY_WEIGHT,
    N_CAT,
    N_CITY,
)


@dataclass(frozen=True)
class Buckets:
    """Items grouped by an integer key, so a random item of a key is one vectorised draw."""

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, n_keys: int) -> Buckets:
        valid = keys >= 0
        order = np.flatnonzero(valid)[np.argsort(keys[valid], kind="stable")]
        count = np.bincount(keys[valid], minlength=n_keys)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def pick(self, rng: np.random.Generator, key: np.ndarray) -> np.ndarray:
        """A uniform item for each key; -1 where the key's bucket is empty."""
        cnt = self.count[key]
        off = (rng.random(len(key)) * np.maximum(cnt, 1)).astype(np.int64)
        out = self.order[np.minimum(self.start[key] + off, len(self.order) - 1)]
        return np.where(cnt > 0, out, -1)


@dataclass(frozen=True)
class Market:
    """The merchants: online shops have no city; offline stores sit in a city and take qr/nfc."""

    category: np.ndarray  # int8
    online: np.ndarray  # bool
    city: np.ndarray  # int16, -1 for online
    lat: np.ndarray
    lon: np.ndarray
    mu: np.ndarray  # log ticket
    sigma: np.ndarray
    by_city_cat: Buckets  # offline, key city * N_CAT + category
    by_cat_online: Buckets  # online, key category
    by_city: Buckets  # offline, key city

    @property
    def size(self) -> int:
        return len(self.category)

    def pick(
        self, rng: np.random.Generator, cat: np.ndarray, city: np.ndarray, online: np.ndarray
    ) -> np.ndarray:
        """A merchant of `cat`: offline in `city` where asked and one exists, else online."""
        off = self.by_city_cat.pick(rng, city * N_CAT + cat)
        on = self.by_cat_online.pick(rng, cat)
        return np.where(online | (off < 0), on, off)


def build_market(rng: np.random.Generator, accounts: int) -> Market:
    """About one merchant per five accounts; every category has online merchants."""
    n = max(200, accounts // 5)
    w = CATEGORY_WEIGHT / CATEGORY_WEIGHT.sum()
    cat = rng.choice(N_CAT, n, p=w)
    cat[:N_CAT] = np.arange(N_CAT)  # every category exists...
    online = rng.random(n) < CATEGORY_ONLINE[cat]
    online[:N_CAT] = True  # ...and sells online
    city = np.where(online, -1, rng.choice(N_CITY, n, p=CITY_WEIGHT)).astype(np.int16)
    c = np.maximum(city, 0)
    lat = np.where(online, np.nan, CITY_LAT[c] + rng.normal(0, 0.04, n)).round(5)
    lon = np.where(online, np.nan, CITY_LON[c] + rng.normal(0, 0.04, n)).round(5)
    mu = np.log(CATEGORY_TICKET[cat]) + rng.normal(0, 0.35, n)
    sigma = rng.uniform(0.35, 0.8, n)
    return Market(
        category=cat.astype(np.int8),
        online=online,
        city=city,
        lat=lat,
        lon=lon,
        mu=mu,
        sigma=sigma,
        by_city_cat=Buckets.build(np.where(online, -1, c * N_CAT + cat), N_CITY * N_CAT),
        by_cat_online=Buckets.build(np.where(online, cat, -1), N_CAT),
        by_city=Buckets.build(np.where(online, -1, c), N_CITY),
    )


@dataclass(frozen=True)
class Popular:
    """Online merchants of a category drawn in proportion to their traffic (big shops first)."""

    order: np.ndarray  # online merchants sorted by category
    cum: np.ndarray  # category + cumulative share inside the category, increasing

    @classmethod
    def build(cls, market: Market, traffic: np.ndarray) -> Popular:
        keys = np.where(market.online, market.category.astype(np.int64), -1)
        valid = np.flatnonzero(keys >= 0)
        order = valid[np.argsort(keys[valid], kind="stable")]
        cat = keys[order]
        w = np.maximum(traffic[order], 1e-6)
        tot = np.bincount(cat, w, minlength=N_CAT)
        share = np.cumsum(w) - np.concatenate([[0.0], np.cumsum(tot)])[cat]
        return cls(order, cat + share / tot[cat])

    def pick(self, rng: np.random.Generator, cat: np.ndarray) -> np.ndarray:
        u = cat + rng.random(len(cat)) * 0.999999
        i = np.minimum(np.searchsorted(self.cum, u), len(self.order) - 1)
        return self.order[i]
