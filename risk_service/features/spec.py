"""The feature set declared once: windows, entities, aggregates and the ordered feature names.

Both computation paths (``online.py`` per event, ``offline.py`` over a table) read
these declarations; neither defines a feature of its own.

Window boundary (the one rule both paths implement): an earlier event ``e`` counts in
window ``W`` (bucket size ``b``, ``n = W / b`` buckets) for the event at ``t`` iff ``e``
precedes it in canonical order (timestamp, then input/arrival order) and
``floor(t_e / b) > floor(t / b) - n``.  Times are integer milliseconds since the
epoch (UTC); amounts are summed in integer minor units (``round(amount * 100)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from risk_service.schema import AUTH_METHODS, CHANNELS, EVENT_TYPES, FUNDING_SOURCES
from risk_service.schema import MERCHANT_CATEGORIES as _MERCHANT_CATEGORIES

FEATURE_SET_VERSION = "fs-1"

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SMALL_AMOUNT_MINOR = 200  # "small" = amount <= 2.00 (card testing)
ROUND_AMOUNT_MINOR = 10_000  # "round" = amount >= 100 and a multiple of 100
DISTINCT_CAP = 1024  # most members remembered per distinct-set (least recently seen forgotten)
MIN_TRAVEL_MS = 60_000  # speed uses max(dt, 60 s) so equal timestamps give no infinity
EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Window:
    """A bucketed time window: ``n_buckets`` buckets of ``bucket_ms`` (<= 24 h: minutes)."""

    label: str
    bucket_ms: int
    n_buckets: int


W10M = Window("10m", MINUTE_MS, 10)
W1H = Window("1h", MINUTE_MS, 60)
W24H = Window("24h", MINUTE_MS, 1440)
W7D = Window("7d", HOUR_MS, 168)
W30D = Window("30d", DAY_MS, 30)
W90D = Window("90d", DAY_MS, 90)

# Entity kind -> the event column naming the entity that an event updates.
ENTITY_KEYS: dict[str, str] = {
    "account": "account_id",
    "instrument": "instrument_id",
    "device": "device_id",
    "ip": "ip_address",
    "merchant": "merchant_id",
    "payee": "payee_account_id",  # the receiving side of transfers (mule inflow)
}
# The identifier columns an event carries (each once): what a shared store keeps hashed.
ID_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(ENTITY_KEYS.values()))

# Categorical request-time features: column -> its allowed values (code = position).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "event_type": EVENT_TYPES,
    "channel": CHANNELS,
    "funding_source": FUNDING_SOURCES,
    "auth_method": AUTH_METHODS,
    "merchant_category": _MERCHANT_CATEGORIES,
}

# Event filters a rolling channel can count; each is a pure function of the event.
FILTERS: tuple[str, ...] = (
    "all",
    "small_payment",  # payment with amount <= 2.00
    "payment",
    "bill_pay",
    "top_up",
    "withdrawal",
    "credit_line",  # funded by the pay-later credit line
)


@dataclass(frozen=True)
class Output:
    """A feature read from a rolling aggregate: which channel, queried by which column."""

    feature: str
    channel: int
    query: str  # event column selecting the entity whose state is read
    description: str


@dataclass(frozen=True)
class Rolling:
    """Running count/amount channels of one entity kind over one window."""

    state: str
    window: Window
    channels: tuple[tuple[str, str], ...]  # (filter, "count" | "amount")
    outputs: tuple[Output, ...]


@dataclass(frozen=True)
class Distinct:
    """A recency-ordered member set per entity (LRU, ``DISTINCT_CAP``, forgotten after horizon)."""

    name: str
    state: str
    member: str  # event column holding the member
    horizon: Window
    windows: tuple[tuple[str, Window], ...]  # (feature, window): members last seen in window
    first_seen: str | None  # feature: 1 if the member is not in the set
    what: str


@dataclass(frozen=True)
class LabelCount:
    """Known frauds of an entity, counted by label_time (strictly before t) in a window."""

    state: str
    window: Window
    feature: str


_NOUN = {
    "account": "this account's",
    "instrument": "this instrument's",
    "device": "this device's",
    "ip": "this IP address's",
    "merchant": "this merchant's",
}


def _basic(state: str, w: Window, extra: tuple[tuple[str, str, str, str], ...] = ()) -> Rolling:
    """Count and amount of all events of ``state`` in ``w``, plus (filter, value, name, doc)s."""
    channels = [("all", "count"), ("all", "amount")]
    outputs = [
        Output(f"{state}_events_{w.label}", 0, ENTITY_KEYS[state],
               f"number of {_NOUN[state]} earlier events in the last {w.label}"),
        Output(f"{state}_amount_{w.label}", 1, ENTITY_KEYS[state],
               f"total amount of {_NOUN[state]} earlier events in the last {w.label}"),
    ]  # fmt: skip
    for flt, value, name, doc in extra:
        outputs.append(Output(name, len(channels), ENTITY_KEYS[state], doc))
        channels.append((flt, value))
    return Rolling(state, w, tuple(channels), tuple(outputs))


def _small(state: str, w: Window) -> tuple[str, str, str, str]:
    return (
        "small_payment",
        "count",
        f"{state}_small_payments_{w.label}",
        f"payments of at most 2.00 from {_NOUN[state][:-2]} in the last {w.label} (card testing)",
    )


def _payee(w: Window, with_inflow: bool) -> Rolling:
    outs = [
        Output(f"payee_received_events_{w.label}", 0, "payee_account_id",
               f"transfers received by this event's payee in the last {w.label}"),
        Output(f"payee_received_amount_{w.label}", 1, "payee_account_id",
               f"amount received by this event's payee in the last {w.label}"),
    ]  # fmt: skip
    if with_inflow:
        outs += [
            Output(f"account_received_events_{w.label}", 0, "account_id",
                   f"transfers received by the acting account in the last {w.label} (mule)"),
            Output(f"account_received_amount_{w.label}", 1, "account_id",
                   f"amount received by the acting account in the last {w.label} (mule)"),
        ]  # fmt: skip
    return Rolling("payee", w, (("all", "count"), ("all", "amount")), tuple(outs))


ROLLINGS: tuple[Rolling, ...] = (
    _basic("account", W10M),
    _basic("account", W1H),
    _basic("account", W24H),
    _basic("account", W7D),
    _basic("account", W30D, (("credit_line", "amount", "account_credit_line_amount_30d",
                              "amount this account spent from its credit line in the last 30d"),)),
    Rolling("account", W90D,
            (("all", "count"), ("bill_pay", "count"), ("top_up", "amount"),
             ("withdrawal", "amount"), ("payment", "amount")),
            (Output("account_events_90d", 0, "account_id",
                    "number of this account's earlier events in the last 90d"),
             Output("account_bill_pay_events_90d", 1, "account_id",
                    "bill payments by this account in the last 90d"),
             Output("account_top_up_amount_90d", 2, "account_id",
                    "amount topped up by this account in the last 90d"),
             Output("account_withdrawal_amount_90d", 3, "account_id",
                    "amount withdrawn by this account in the last 90d"),
             Output("account_spend_amount_90d", 4, "account_id",
                    "amount of this account's payments in the last 90d"))),
    Rolling("instrument", W10M, (("small_payment", "count"),),
            (Output("instrument_small_payments_10m", 0, "instrument_id",
                    "payments of at most 2.00 with this instrument in the last 10m"),)),
    _basic("instrument", W1H, (_small("instrument", W1H),)),
    _basic("instrument", W24H),
    _basic("instrument", W7D),
    _basic("instrument", W30D),
    _basic("device", W10M, (_small("device", W10M),)),
    _basic("device", W1H, (_small("device", W1H),)),
    _basic("device", W24H),
    _basic("ip", W10M),
    _basic("ip", W1H),
    _basic("ip", W24H),
    _basic("merchant", W10M),
    _basic("merchant", W1H),
    _basic("merchant", W24H),
    _basic("merchant", W7D),
    Rolling("merchant", W30D, (("all", "count"),),
            (Output("merchant_events_30d", 0, "merchant_id",
                    "number of this merchant's earlier events in the last 30d"),)),
    _payee(W1H, True),
    _payee(W24H, True),
    _payee(W7D, False),
)  # fmt: skip

DISTINCTS: tuple[Distinct, ...] = (
    Distinct("account_devices", "account", "device_id", W90D,
             (("account_distinct_devices_7d", W7D), ("account_distinct_devices_30d", W30D)),
             "is_new_device_for_account", "devices"),
    Distinct("account_ips", "account", "ip_address", W90D, (), "is_new_ip_for_account",
             "IP addresses"),
    Distinct("account_payees", "account", "payee_account_id", W90D,
             (("account_distinct_payees_7d", W7D),), "is_new_payee_for_account", "payees"),
    Distinct("account_merchants", "account", "merchant_id", W90D,
             (("account_distinct_merchants_1h", W1H),), "is_new_merchant_for_account",
             "merchants"),
    Distinct("account_instruments", "account", "instrument_id", W90D,
             (("account_distinct_instruments_30d", W30D),), "is_new_instrument_for_account",
             "instruments"),
    Distinct("device_accounts", "device", "account_id", W7D,
             (("device_distinct_accounts_24h", W24H), ("device_distinct_accounts_7d", W7D)),
             None, "accounts"),
    Distinct("ip_accounts", "ip", "account_id", W24H,
             (("ip_distinct_accounts_1h", W1H), ("ip_distinct_accounts_24h", W24H)),
             None, "accounts"),
)  # fmt: skip

LABELS: tuple[LabelCount, ...] = (
    LabelCount("merchant", W30D, "merchant_known_frauds_30d"),
    LabelCount("device", W30D, "device_known_frauds_30d"),
    LabelCount("account", W90D, "account_known_frauds_90d"),
)

# The entity kinds a fraud label reaches (the state a label feature is read from).
LABEL_KINDS: tuple[str, ...] = tuple(dict.fromkeys(lab.state for lab in LABELS))

# Which entity's "time since previous event" is a feature.
TIME_SINCE: dict[str, str] = {
    "account": "seconds_since_account_previous_event",
    "instrument": "seconds_since_instrument_previous_event",
    "device": "seconds_since_device_previous_event",
}

REQUEST_FEATURES: dict[str, str] = {
    "amount": "amount of the event in major units",
    "event_type": "code of the event type (schema EVENT_TYPES order)",
    "channel": "code of the channel (schema CHANNELS order)",
    "funding_source": "code of the funding source (schema FUNDING_SOURCES order)",
    "auth_method": "code of the authentication method (schema AUTH_METHODS order)",
    "merchant_category": "code of the merchant category (schema MERCHANT_CATEGORIES order)",
    "hour_of_day": "hour of the event, UTC (0-23)",
    "day_of_week": "day of the week, UTC (0 = Monday)",
    "amount_is_round": "1 if the amount is at least 100 and a whole multiple of 100",
    "amount_is_small": "1 if the amount is at most 2.00",
}
DERIVED_FEATURES: dict[str, str] = {
    "amount_to_account_mean_30d": "amount divided by this account's mean amount over 30d",
    "amount_to_instrument_mean_30d": "amount divided by this instrument's mean amount over 30d",
    "amount_to_merchant_mean_7d": "amount divided by this merchant's mean amount over 7d",
    "seconds_since_account_previous_event": "seconds since this account's previous event",
    "seconds_since_instrument_previous_event": "seconds since this instrument's previous event",
    "seconds_since_device_previous_event": "seconds since this device's previous event",
    "km_from_previous_location": "km from this account's previous located event",
    "speed_kmh_from_previous_location": "km/h needed to travel from the previous location",
    "km_from_home": "km from the account holder's home",
    "account_age_days": "days since the account was opened",
    "kyc_level": "KYC level of the account (0-3)",
    "holder_age": "age of the account holder in years",
    "monthly_income": "declared monthly income of the account holder",
    "credit_limit": "pay-later credit limit of the account",
    "amount_to_monthly_income": "amount divided by the holder's monthly income",
    "merchant_known_fraud_rate_30d": "confirmed frauds at this merchant per event over 30d",
    "requested_limit": "credit line asked for",
    "requested_to_income": "requested credit line divided by monthly income",
    "credit_line_utilisation_30d": "credit-line spending over 30d divided by the credit limit",
}


def _all_descriptions() -> dict[str, str]:
    out = dict(REQUEST_FEATURES)
    for r in ROLLINGS:
        out.update({o.feature: o.description for o in r.outputs})
    for d in DISTINCTS:
        for feat, w in d.windows:
            out[feat] = f"distinct {d.what} seen by this {d.state} in the last {w.label}"
        if d.first_seen:
            out[d.first_seen] = f"1 if this account used none of its {d.what} like this one in 90d"
    for lab in LABELS:
        out[lab.feature] = (
            f"confirmed frauds of this {lab.state} labelled in the last {lab.window.label}"
        )
    out.update(DERIVED_FEATURES)
    return out


FEATURE_DESCRIPTIONS: dict[str, str] = _all_descriptions()

_WINDOWED = [o.feature for r in ROLLINGS for o in r.outputs]
_CREDIT_ONLY = {
    "account_events_90d",
    "account_bill_pay_events_90d",
    "account_top_up_amount_90d",
    "account_withdrawal_amount_90d",
    "account_spend_amount_90d",
    "account_credit_line_amount_30d",
}

FEATURE_NAMES: tuple[str, ...] = (
    *REQUEST_FEATURES,
    *(f for f in _WINDOWED if f not in _CREDIT_ONLY),
    "amount_to_account_mean_30d",
    "amount_to_instrument_mean_30d",
    "amount_to_merchant_mean_7d",
    *(feat for d in DISTINCTS for feat, _ in d.windows),
    *(d.first_seen for d in DISTINCTS if d.first_seen),
    *TIME_SINCE.values(),
    "km_from_previous_location",
    "speed_kmh_from_previous_location",
    "km_from_home",
    "account_age_days",
    "kyc_level",
    "holder_age",
    "monthly_income",
    "credit_limit",
    "amount_to_monthly_income",
    *(lab.feature for lab in LABELS if lab.state != "account"),
    "merchant_known_fraud_rate_30d",
    "account_known_frauds_90d",
)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(CATEGORIES)

CREDIT_FEATURE_NAMES: tuple[str, ...] = (
    "requested_limit",
    "requested_to_income",
    "account_age_days",
    "kyc_level",
    "holder_age",
    "monthly_income",
    "credit_limit",
    "account_events_30d",
    "account_events_90d",
    "account_bill_pay_events_90d",
    "account_top_up_amount_90d",
    "account_withdrawal_amount_90d",
    "account_spend_amount_90d",
    "account_credit_line_amount_30d",
    "credit_line_utilisation_30d",
    "account_distinct_devices_30d",
    "seconds_since_account_previous_event",
    "account_known_frauds_90d",
)
