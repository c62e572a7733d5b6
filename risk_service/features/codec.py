"""Entity state and profiles to bytes and back, for stores outside the process (Redis).

JSON (orjson), not pickle: whoever can write to the store must not be able to run
code in the service. Window sizes are not stored: they come from the feature spec
(``new_state(kind)``), and the feature-set version is part of every store key, so a
blob is only ever read by the code that wrote it.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

import orjson

from risk_service.features.aggregates import EntityState, Profile
from risk_service.features.spec import DAY_MS, DISTINCTS, ENTITY_KEYS, LABELS, ROLLINGS, Window

NAN = math.nan


def encode_state(st: EntityState) -> bytes:
    """One entity's state as compact JSON (bucket lists, recency-ordered members, label times)."""
    return orjson.dumps(
        [
            [[r.cutoff, r.totals, r.buckets] for r in st.rolling],
            [[True, list(m.last.items())] for m in st.distinct],  # True: in time order
            [lab.times for lab in st.labels],
            st.last_ms,
            st.last_loc,
        ]
    )


def decode_state(kind: str, blob: bytes | str) -> EntityState:
    """The inverse of ``encode_state`` for an entity of ``kind``."""
    from risk_service.features.online import new_state  # online imports this module's users

    rolling, distinct, labels, last_ms, last_loc = orjson.loads(blob)
    st = new_state(kind)
    if len(rolling) != len(st.rolling) or len(distinct) != len(st.distinct):
        raise ValueError(f"a {kind} state blob does not match this feature set")
    for agg, (cutoff, totals, buckets) in zip(st.rolling, rolling, strict=True):
        agg.cutoff, agg.totals, agg.buckets = cutoff, totals, buckets
    for members, (in_order, items) in zip(st.distinct, distinct, strict=True):
        # blobs written before 2026-12-03 kept arrival order (in_order false after a late one)
        members.last = dict(items if in_order else sorted(items, key=itemgetter(1)))
    for lab, times in zip(st.labels, labels, strict=True):
        lab.times = times
    st.last_ms = last_ms
    st.last_loc = None if last_loc is None else (last_loc[0], last_loc[1], last_loc[2])
    return st


def _nan(x: float | None) -> float:
    return NAN if x is None else float(x)


def encode_profile(p: Profile) -> bytes:
    """NaN becomes null (JSON has no NaN) and comes back as NaN."""
    return orjson.dumps(
        [p.created_ms, p.kyc, p.age, p.income, p.credit_limit, p.home],
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def decode_profile(blob: bytes | str) -> Profile:
    created, kyc, age, income, limit, home = orjson.loads(blob)
    return Profile(
        created,
        _nan(kyc),
        _nan(age),
        _nan(income),
        _nan(limit),
        None if home is None else (home[0], home[1]),
    )


def encode(kind: str, value: Any) -> bytes:
    return encode_profile(value) if kind == "profile" else encode_state(value)


def decode(kind: str, blob: bytes | str) -> Any:
    return decode_profile(blob) if kind == "profile" else decode_state(kind, blob)


def _span(w: Window) -> int:
    return w.bucket_ms * w.n_buckets


def retention_ms(kind: str) -> int:
    """How long an untouched entity's state can still matter: its longest window, plus a day."""
    spans = [_span(r.window) for r in ROLLINGS if r.state == kind]
    spans += [_span(x.horizon) for x in DISTINCTS if x.state == kind]
    spans += [_span(x.window) for x in LABELS if x.state == kind]
    if kind not in ENTITY_KEYS:
        raise ValueError(f"unknown entity kind {kind!r}")
    return max(spans, default=0) + DAY_MS
