"""Events as integer-coded column batches, their labels, and decoding into the schema's tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from risk_service.schema import (
    AUTH_METHODS,
    CHANNELS,
    EVENT_TYPES,
    FRAUD_SCENARIOS,
    FUNDING_SOURCES,
    MERCHANT_CATEGORIES,
    column_names,
)

from .config import (
    CHARGEBACK_WINDOW_DAYS,
    CURRENCY,
    DAY,
    FRAUD_DELAY_MAX_DAYS,
    FRAUD_DELAY_MEDIAN_DAYS,
    FRAUD_DELAY_MIN_DAYS,
    FRAUD_DELAY_SIGMA,
)
from .population import Population

Batch = dict[str, np.ndarray]

# Integer-coded columns while generating; -1 means missing for codes.
CODE_COLUMNS: dict[str, type] = {
    "t": np.int64,
    "key": np.int64,
    "acct": np.int64,
    "etype": np.int8,
    "amount": np.float64,
    "channel": np.int8,
    "merchant": np.int64,
    "payee": np.int64,
    "inst": np.int64,
    "device": np.int64,
    "ip": np.int64,
    "lat": np.float64,
    "lon": np.float64,
    "auth": np.int8,
    "fraud": np.int8,
    "scen": np.int8,
    "label_t": np.int64,
}
_FILL = {"lat": np.nan, "lon": np.nan, "fraud": 0, "amount": 0.0}
CODE_SCHEMA = pa.schema([(k, pa.from_numpy_dtype(np.dtype(v))) for k, v in CODE_COLUMNS.items()])

# Identifier universes: prefix, digits, and an affine scramble modulo a prime so that an id
# says nothing about when or why its entity was created.
_IDS = {
    "account": ("a", 7, 9_999_991, 7_368_787),
    "device": ("d", 8, 99_999_989, 48_271_911),
    "instrument": ("i", 8, 99_999_989, 69_621_337),
    "merchant": ("m", 6, 999_983, 521_283),
}


def new_batch(n: int, **cols: np.ndarray | float | int) -> Batch:
    """A batch of n events: given columns broadcast, others missing (-1 / NaN)."""
    out: Batch = {}
    for name, dt in CODE_COLUMNS.items():
        if name in cols:
            out[name] = np.broadcast_to(np.asarray(cols[name]), (n,)).astype(dt)
        else:
            out[name] = np.full(n, _FILL.get(name, -1), dt)
    return out


def concat(batches: list[Batch]) -> Batch:
    return {k: np.concatenate([b[k] for b in batches]) for k in CODE_COLUMNS}


def set_labels(rng: np.random.Generator, b: Batch) -> None:
    """Fraud is reported after a lognormal delay; good events are confirmed at chargeback close."""
    delay = np.clip(
        rng.lognormal(np.log(FRAUD_DELAY_MEDIAN_DAYS), FRAUD_DELAY_SIGMA, len(b["t"])),
        FRAUD_DELAY_MIN_DAYS,
        FRAUD_DELAY_MAX_DAYS,
    )
    fraud_t = b["t"] + (delay * DAY).astype(np.int64)
    b["label_t"] = np.where(b["fraud"] == 1, fraud_t, b["t"] + CHARGEBACK_WINDOW_DAYS * DAY)


def to_table(b: Batch) -> pa.Table:
    return pa.table({k: b[k] for k in CODE_COLUMNS}, schema=CODE_SCHEMA)


def ids(universe: str, codes: np.ndarray) -> pa.Array:
    """Scrambled, fixed-width identifier strings; null where the code is -1."""
    prefix, width, prime, mult = _IDS[universe]
    scrambled = (codes * mult + 1) % prime
    arr = pa.array(scrambled, mask=codes < 0)
    return pc.binary_join_element_wise(
        prefix, pc.utf8_lpad(pc.cast(arr, pa.string()), width, "0"), ""
    )


def _enum(values: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(codes, mask=codes < 0))


def timestamps(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, pa.timestamp("us", tz="UTC"))


def decode_events(codes: pa.Table, pop: Population, ip_strings: np.ndarray) -> pa.Table:
    """Sort by (timestamp, generation key), number the events, and decode codes to strings."""
    order = pc.sort_indices(codes, [("t", "ascending"), ("key", "ascending")])
    c = {name: codes.column(name).take(order).to_numpy() for name in codes.column_names}
    n = len(c["t"])
    inst_source = np.full(pop.alloc.count["instrument"], -1, np.int8)
    inst = pop.a["inst"]
    for k in range(inst.shape[1]):
        inst_source[inst[inst[:, k] >= 0, k]] = k
    merchant = c["merchant"]
    cat = np.where(merchant >= 0, pop.market.category[np.maximum(merchant, 0)], -1)
    width = max(9, len(str(n)))
    seq = pc.cast(pa.array(np.arange(n)), pa.string())
    scen = c["scen"]
    cols = {
        "event_id": pc.binary_join_element_wise("e", pc.utf8_lpad(seq, width, "0"), ""),
        "timestamp": timestamps(c["t"]),
        "account_id": ids("account", c["acct"]),
        "event_type": _enum(EVENT_TYPES, c["etype"]),
        "amount": pa.array(np.round(c["amount"], 2)),
        "currency": pa.array(np.full(n, CURRENCY, dtype=object), pa.string()),
        "channel": _enum(CHANNELS, c["channel"]),
        "merchant_id": ids("merchant", merchant),
        "merchant_category": _enum(MERCHANT_CATEGORIES, cat),
        "payee_account_id": ids("account", c["payee"]),
        "instrument_id": ids("instrument", c["inst"]),
        "funding_source": _enum(
            FUNDING_SOURCES, np.where(c["inst"] >= 0, inst_source[np.maximum(c["inst"], 0)], -1)
        ),
        "device_id": ids("device", c["device"]),
        "ip_address": pc.take(
            pa.array(ip_strings, pa.string()), pa.array(c["ip"], mask=c["ip"] < 0)
        ),
        "latitude": pa.array(np.round(c["lat"], 5), from_pandas=True),
        "longitude": pa.array(np.round(c["lon"], 5), from_pandas=True),
        "auth_method": _enum(AUTH_METHODS, c["auth"]),
        "is_fraud": pa.array(c["fraud"].astype(np.int8)),
        "label_time": timestamps(c["label_t"]),
        "fraud_scenario": _enum(FRAUD_SCENARIOS, np.where(c["fraud"] == 1, scen, -1)),
    }
    return pa.table({name: cols[name] for name in column_names("events")})
