"""Constants of the simulated world and its calendar, in one place for docs/simulator.md to cite."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

from risk_service.schema import (
    AUTH_METHODS,
    CHANNELS,
    EVENT_TYPES,
    FRAUD_SCENARIOS,
    FUNDING_SOURCES,
    MERCHANT_CATEGORIES,
)

DAY = 86_400
HOUR = 3_600
MINUTE = 60

# Labels: fraud is reported after a lognormal delay; a good event is confirmed good when
# the chargeback window closes; a credit outcome is known after the performance window.
FRAUD_DELAY_MEDIAN_DAYS = 10.0
FRAUD_DELAY_SIGMA = 0.65
FRAUD_DELAY_MIN_DAYS = 0.5
FRAUD_DELAY_MAX_DAYS = 45.0
CHARGEBACK_WINDOW_DAYS = 45
CREDIT_PERFORMANCE_DAYS = 90
CREDIT_GRACE_DAYS = 5

DEFAULT_FRAUD_RATE = 0.005
MAX_FRAUD_RATE = 0.2
MIN_ACCOUNTS = 50
MIN_DAYS = 7
CHUNK_ACCOUNTS = 2_500
FORMATS = ("parquet", "csv")
CURRENCY = "CNY"

# Mean ordinary events per account-day before calendar effects (tuned so that the default
# world, 10 000 accounts x 120 days, has about one million events).
MEAN_DAILY_RATE = 0.82
EVENTS_PER_ACCOUNT_DAY_ESTIMATE = 0.93

# Codes: position in the schema's enum tuples, so decoding is a lookup.
ET = {name: i for i, name in enumerate(EVENT_TYPES)}
CH = {name: i for i, name in enumerate(CHANNELS)}
FS = {name: i for i, name in enumerate(FUNDING_SOURCES)}
AU = {name: i for i, name in enumerate(AUTH_METHODS)}
CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
SC = {name: i for i, name in enumerate(FRAUD_SCENARIOS)}
N_CAT = len(MERCHANT_CATEGORIES)

# Merchant mix: share of merchants, share selling online, typical ticket (CNY).
CATEGORY_WEIGHT = np.array([20, 20, 8, 3, 10, 6, 7, 4, 4, 6, 8, 2], dtype=float)
CATEGORY_ONLINE = np.array([0.2, 0.15, 0.3, 1.0, 0.5, 0.6, 1.0, 1.0, 0.8, 0.2, 0.5, 0.3])
CATEGORY_TICKET = np.array([60, 70, 15, 150, 250, 900, 40, 60, 1200, 120, 100, 3000], dtype=float)
# How much an ordinary account likes each category (utilities go through bill_pay).
CATEGORY_TASTE = np.array([30, 25, 12, 0.5, 8, 3, 6, 3, 2, 5, 6, 0.5], dtype=float)
FESTIVAL_CATEGORIES = np.array([CAT["fashion"], CAT["electronics"], CAT["digital_goods"]])
ONLINE_FRAUD_CATEGORIES = np.array(
    [CAT["digital_goods"], CAT["electronics"], CAT["luxury"], CAT["gaming"]]
)

# (name, latitude, longitude, relative population)
CITIES: tuple[tuple[str, float, float, float], ...] = (
    ("Shanghai", 31.23, 121.47, 10),
    ("Beijing", 39.90, 116.41, 9),
    ("Guangzhou", 23.13, 113.26, 7),
    ("Shenzhen", 22.54, 114.06, 7),
    ("Chengdu", 30.57, 104.07, 6),
    ("Chongqing", 29.56, 106.55, 6),
    ("Hangzhou", 30.27, 120.16, 5),
    ("Wuhan", 30.59, 114.31, 5),
    ("Xi'an", 34.34, 108.94, 4),
    ("Tianjin", 39.34, 117.36, 4),
    ("Nanjing", 32.06, 118.80, 4),
    ("Suzhou", 31.30, 120.59, 4),
    ("Zhengzhou", 34.75, 113.63, 4),
    ("Changsha", 28.23, 112.94, 3),
    ("Shenyang", 41.81, 123.43, 3),
    ("Qingdao", 36.07, 120.38, 3),
    ("Dongguan", 23.02, 113.75, 3),
    ("Foshan", 23.02, 113.12, 3),
    ("Kunming", 25.04, 102.71, 2),
    ("Dalian", 38.91, 121.61, 2),
    ("Xiamen", 24.48, 118.09, 2),
    ("Hefei", 31.82, 117.23, 2),
    ("Fuzhou", 26.07, 119.30, 2),
    ("Jinan", 36.65, 117.12, 2),
    ("Harbin", 45.80, 126.53, 2),
    ("Changchun", 43.82, 125.32, 2),
    ("Nanning", 22.82, 108.32, 2),
    ("Shijiazhuang", 38.04, 114.51, 2),
    ("Guiyang", 26.65, 106.63, 1),
    ("Urumqi", 43.83, 87.62, 1),
)
CITY_LAT = np.array([c[1] for c in CITIES])
CITY_LON = np.array([c[2] for c in CITIES])
CITY_WEIGHT = np.array([c[3] for c in CITIES], dtype=float) / sum(c[3] for c in CITIES)
N_CITY = len(CITIES)

# Hour-of-day activity (relative), weekday and weekend; weekends start later.
HOURLY_WEEKDAY = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1.5, 4, 6, 5, 5, 6, 9, 7, 5, 5, 5, 6, 8, 9, 9, 8, 5, 2.5]
)
HOURLY_WEEKEND = np.array(
    [2, 1.2, 0.6, 0.3, 0.2, 0.3, 0.6, 1.5, 3, 5, 7, 8, 9, 8, 7, 7, 7, 7, 8, 9, 9, 8, 6, 3.5]
)
WEEKDAY_FACTOR = np.array([1.0, 0.97, 0.98, 1.0, 1.1, 1.15, 1.05])  # Monday .. Sunday

# Shopping festivals (month, day) -> activity multiplier, with pre-sale and after days.
FESTIVALS: dict[tuple[int, int], float] = {
    (11, 10): 1.4,
    (11, 11): 3.0,
    (11, 12): 1.5,
    (6, 17): 1.3,
    (6, 18): 2.2,
    (6, 19): 1.2,
}

# Red-packet days (month, day) -> share of customers sending red packets to their circle
# (Qixi, Mid-Autumn, National Day, Spring Festival eve and day).
RED_PACKET_DAYS: dict[tuple[int, int], float] = {
    (8, 19): 0.03,
    (9, 25): 0.05,
    (10, 1): 0.05,
    (2, 16): 0.08,
    (2, 17): 0.06,
}


@dataclass(frozen=True)
class Calendar:
    """Per-day facts of the simulated period: start instants, weekday, payday and festival lift."""

    start: int  # epoch seconds of the first midnight (UTC)
    days: int
    day_start: np.ndarray  # int64 epoch seconds
    weekend: np.ndarray  # bool
    factor: np.ndarray  # float activity multiplier (weekday x payday x festival)
    festival: np.ndarray  # float: 0 ordinary day, > 0 festival intensity
    red_packet: np.ndarray  # float: share of customers sending red packets that day

    @property
    def end(self) -> int:
        return self.start + self.days * DAY


def make_calendar(start: date, days: int) -> Calendar:
    """Month-end paydays lift activity ~15%, festivals up to 3x, weekends differ per weekday."""
    t0 = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
    dates = np.datetime64(start.isoformat(), "D") + np.arange(days)
    months = dates.astype("datetime64[M]")
    dom = (dates - months).astype(np.int64) + 1
    month = months.astype(np.int64) % 12 + 1
    dow = (dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    next_month_len = ((months + 1).astype("datetime64[D]") - months.astype("datetime64[D]")).astype(
        np.int64
    )
    payday = (dom >= next_month_len - 5) | (dom == 1)
    fest = np.zeros(days)
    for (m, d), lift in FESTIVALS.items():
        fest[(month == m) & (dom == d)] = lift
    red = np.zeros(days)
    for (m, d), share in RED_PACKET_DAYS.items():
        red[(month == m) & (dom == d)] = share
    factor = WEEKDAY_FACTOR[dow] * np.where(payday, 1.15, 1.0) * np.where(fest > 0, fest, 1.0)
    return Calendar(
        start=t0,
        days=days,
        day_start=t0 + np.arange(days, dtype=np.int64) * DAY,
        weekend=dow >= 5,
        factor=factor,
        festival=fest,
        red_packet=red,
    )
