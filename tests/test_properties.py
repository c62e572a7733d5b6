"""Property tests (Hypothesis) of the feature code and its rules, as docs/features.md and
docs/architecture.md state them.

- online == offline for random small worlds (a few accounts, devices, merchants; equal
  timestamps and timestamps on bucket boundaries; labels; profiles; applications);
- window and bucket boundaries: ``floor(t_e / b) > floor(t / b) - n``, labels strictly
  before ``t``, online and offline;
- idempotent replays (the same event_id, the same label) leave every feature of every
  later event unchanged, through POST /score and POST /feedback;
- late events: flagged beyond MAX_LATENESS_SECONDS, scored on the current state, applied;
- extreme amounts and timestamps: no exception and no infinity in the feature code; through
  POST /score, 200 or a 400 naming the field.

Examples are derandomised (`derandomize=True`) and few (30 to 150 per property): the file
takes about 20 s of CPU. The Flask apps are built once per test (building one costs ~0.7 s)
and every Hypothesis example uses identifiers of its own, so examples do not see each other.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from conftest import AppFactory
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_features_world import assert_features_equal, replay

from risk_service.features import (
    CREDIT_FEATURE_NAMES,
    FEATURE_NAMES,
    OnlineFeatureEngine,
    compute_offline_credit_features,
    compute_offline_features,
)
from risk_service.features.spec import DAY_MS, HOUR_MS, MINUTE_MS, ROLLINGS, Window
from risk_service.schema import (
    AUTH_METHODS,
    CHANNELS,
    EVENT_TYPES,
    FUNDING_SOURCES,
    MERCHANT_CATEGORIES,
)

SETTINGS = settings(
    max_examples=50,
    deadline=None,  # the first offline call may compile numba kernels
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SERVICE = settings(  # through the Flask test client
    SETTINGS,
    max_examples=30,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # one app for all examples, ids per example
    ],
)

T2024 = 1_704_067_200_000  # 2024-01-01T00:00:00Z: a day, hour and minute boundary
T2200 = 7_258_118_400_000  # 2200-01-01T00:00:00Z: far future, inside pandas' range
MAX_AMOUNT = 1e9
ACCOUNT_WINDOWS: tuple[Window, ...] = tuple(
    r.window for r in ROLLINGS if r.state == "account" and r.window.label != "90d"
)  # 10m, 1h, 24h, 7d, 30d: account_events_<label> among the fraud features
W90D = next(r.window for r in ROLLINGS if r.state == "account" and r.window.label == "90d")
_SPANS = sorted({r.window.bucket_ms * r.window.n_buckets for r in ROLLINGS})
BOUNDARY_OFFSETS = sorted(
    {k * span + e for span in (MINUTE_MS, *_SPANS) for k in (0, 1, 2) for e in (-1, 0, 1)} - {-1}
)  # every window length (and the minute bucket), once and twice, and 1 ms either side


def windows_count(t_e: int, t: int, window: Window) -> bool:
    """The documented rule: an earlier event at t_e counts in `window` for the event at t."""
    b = window.bucket_ms
    return t_e // b > t // b - window.n_buckets


# -- random small worlds ----------------------------------------------------------------------
amounts = st.one_of(
    st.sampled_from([0.01, 1.0, 2.0, 2.01, 100.0, 1000.0, 999_999_999.99, MAX_AMOUNT]),
    st.integers(1, 10**8).map(lambda cents: cents / 100),
)
offsets = st.one_of(st.sampled_from(BOUNDARY_OFFSETS), st.integers(0, 100 * DAY_MS))


def _maybe(values: Any, p_none: float = 0.25) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(values)) if p_none else st.sampled_from(values)


@st.composite
def worlds(
    draw: st.DrawFn, starts: tuple[int, ...] = (T2024,), max_events: int = 25
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, accounts, applications) of a small adversarial world, in input order."""
    start = draw(st.sampled_from(starts))
    accounts = ["A0", "A1", "A2"]
    n = draw(st.integers(1, max_events))
    rows, label_times = [], []
    for i in range(n):
        ms = start + draw(offsets)
        event_type = draw(st.sampled_from(EVENT_TYPES))
        located = draw(st.booleans())
        fraud = draw(st.integers(0, 4)) == 0
        label_delay = draw(st.one_of(st.sampled_from([0, 1, MINUTE_MS, DAY_MS]), offsets))
        label_times.append(ms + label_delay if draw(st.integers(0, 9)) else None)
        rows.append(
            {
                "event_id": f"E{i}",
                "timestamp": ms,
                "account_id": draw(st.sampled_from(accounts)),
                "event_type": event_type,
                "amount": draw(amounts),
                "currency": "CNY",
                "channel": draw(_maybe(CHANNELS)),
                "merchant_id": draw(_maybe(["M0", "M1"]))
                if event_type in ("payment", "bill_pay")
                else None,
                "merchant_category": draw(_maybe(MERCHANT_CATEGORIES)),
                "payee_account_id": draw(st.sampled_from(accounts))
                if event_type == "transfer"
                else None,
                "instrument_id": draw(_maybe(["I0", "I1", "I2"])),
                "funding_source": draw(_maybe(FUNDING_SOURCES)),
                "device_id": draw(_maybe(["D0", "D1"])),
                "ip_address": draw(_maybe(["10.0.0.1", "10.0.0.2"])),
                "latitude": draw(st.floats(-90, 90)) if located else math.nan,
                "longitude": draw(st.floats(-180, 180)) if located else math.nan,
                "auth_method": draw(_maybe(AUTH_METHODS)),
                "is_fraud": int(fraud),
                "label_time": None,  # set below, exactly
            }
        )
    events = pd.DataFrame(rows)
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="ms", utc=True)
    events["label_time"] = pd.Series(  # exact milliseconds (a float column would round)
        [pd.NaT if x is None else pd.Timestamp(x, unit="ms") for x in label_times],
        dtype="datetime64[ns, UTC]",
    )
    events["is_fraud"] = events["is_fraud"].astype(np.int8)
    profiled = draw(st.lists(st.sampled_from(accounts), unique=True, max_size=3))
    profiles = pd.DataFrame(
        {
            "account_id": profiled,
            "created_at": pd.to_datetime(
                [start + draw(st.integers(-400 * DAY_MS, 30 * DAY_MS)) for _ in profiled],
                unit="ms",
                utc=True,
            ),
            "kyc_level": np.array([draw(st.integers(0, 3)) for _ in profiled], dtype=np.int8),
            "age": [draw(st.integers(18, 90)) for _ in profiled],
            "monthly_income": [
                draw(st.sampled_from([0.0, 1.0, 8000.0, math.nan])) for _ in profiled
            ],
            "home_latitude": [draw(st.floats(-90, 90)) for _ in profiled],
            "home_longitude": [draw(st.floats(-180, 180)) for _ in profiled],
            "credit_limit": [draw(st.sampled_from([0.0, 1000.0, MAX_AMOUNT])) for _ in profiled],
        }
    )
    n_apps = draw(st.integers(1, 4))
    applications = pd.DataFrame(
        {
            "application_id": [f"P{j}" for j in range(n_apps)],
            "account_id": [draw(st.sampled_from(accounts)) for _ in range(n_apps)],
            "timestamp": pd.to_datetime(
                [start + draw(offsets) for _ in range(n_apps)], unit="ms", utc=True
            ),
            "requested_limit": [draw(amounts) for _ in range(n_apps)],
        }
    )
    return events, profiles, applications


def _assert_parity(
    events: pd.DataFrame, accounts: pd.DataFrame | None, apps: pd.DataFrame
) -> np.ndarray:
    """Online replay in canonical order == offline, fraud and credit features; the online."""
    online, credit_online = replay(events, accounts, apps)
    offline = compute_offline_features(events, accounts)
    assert_features_equal(online, offline.to_numpy(), FEATURE_NAMES)
    credit = compute_offline_credit_features(events, accounts, apps)
    assert_features_equal(credit_online, credit.to_numpy(), CREDIT_FEATURE_NAMES)
    return online


@SETTINGS
@given(worlds())
def test_online_equals_offline_for_random_worlds(
    world: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    _assert_parity(*world)


# -- window and bucket boundaries -------------------------------------------------------------
def _two_events(t1: int, t2: int, label_ms: int | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ["E0", "E1"],
            "timestamp": pd.to_datetime([t1, t2], unit="ms", utc=True),
            "account_id": ["A0", "A0"],
            "event_type": ["payment", "payment"],
            "amount": [10.0, 20.0],
            "is_fraud": np.array([label_ms is not None, False], dtype=np.int8),
            "label_time": pd.Series(
                [pd.NaT if label_ms is None else pd.Timestamp(label_ms, unit="ms"), pd.NaT],
                dtype="datetime64[ns, UTC]",
            ),
        }
    )


@settings(SETTINGS, max_examples=120)
@given(
    t1=st.integers(0, 60 * 365 * DAY_MS),
    delta=st.one_of(st.sampled_from(BOUNDARY_OFFSETS), st.integers(0, 120 * DAY_MS)),
    label_delta=st.one_of(st.none(), st.sampled_from(BOUNDARY_OFFSETS), st.integers(0, 10**10)),
)
@example(t1=T2024, delta=10 * MINUTE_MS, label_delta=None)  # exactly one window: out
@example(t1=T2024, delta=10 * MINUTE_MS - 1, label_delta=None)  # 1 ms less: in
@example(t1=T2024 + 59_999, delta=9 * MINUTE_MS + 1, label_delta=None)  # next bucket start
@example(t1=T2024, delta=5, label_delta=5)  # a label at exactly t is not seen
@example(t1=T2024, delta=5, label_delta=4)  # 1 ms earlier it is
@example(t1=0, delta=0, label_delta=None)  # the epoch, equal timestamps
def test_window_boundaries_hold(t1: int, delta: int, label_delta: int | None) -> None:
    """An earlier event (and a fraud label) counts for the event at t exactly as documented,
    in every account window, online and offline."""
    t2 = t1 + delta
    label_ms = None if label_delta is None else t1 + label_delta
    events = _two_events(t1, t2, label_ms)
    application = pd.DataFrame(
        {"application_id": ["P0"], "account_id": ["A0"], "timestamp": [events["timestamp"][1]],
         "requested_limit": [500.0]}
    )  # fmt: skip
    online = _assert_parity(events, None, application)
    second = dict(zip(FEATURE_NAMES, online[1], strict=True))
    for window in ACCOUNT_WINDOWS:
        expected = float(windows_count(t1, t2, window))
        assert second[f"account_events_{window.label}"] == expected, window
        assert second[f"account_amount_{window.label}"] == 10.0 * expected, window
    assert online[0][FEATURE_NAMES.index("account_events_10m")] == 0.0  # sees nothing
    label_seen = label_ms is not None and label_ms < t2 and windows_count(label_ms, t2, W90D)
    assert second["account_known_frauds_90d"] == float(label_seen)
    credit = compute_offline_credit_features(events, None, application).iloc[0]
    # an application is placed before events at its own timestamp: it sees E0 only if earlier
    sees_first = t1 < t2 and windows_count(t1, t2, W90D)
    assert credit["account_events_90d"] == float(sees_first)


# -- idempotent replays, through the service ---------------------------------------------------
_SEQ = itertools.count()  # example number: identifiers and times of their own


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _score(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.get_json()
    payload: dict[str, Any] = response.get_json()
    payload.pop("timing_ms")
    return payload


def _features(client: FlaskClient, event_id: str) -> dict[str, Any]:
    response = client.get(f"/decisions/{event_id}")
    assert response.status_code == 200, response.get_json()
    features: dict[str, Any] = response.get_json()["features"]
    return features


steps = st.lists(
    st.tuples(
        st.sampled_from(["score", "score", "score", "replay", "conflict", "label"]),
        st.integers(0, 3),  # account
        st.sampled_from([0, 1, 30_000, MINUTE_MS, 10 * MINUTE_MS, HOUR_MS]),  # time step
        st.integers(0, 50),  # which earlier event (modulo how many there are)
        st.sampled_from(["payment", "transfer", "top_up", "withdrawal", "bill_pay"]),
        amounts,
    ),
    min_size=6,
    max_size=14,
)


@pytest.fixture
def twin_apps(make_app: AppFactory) -> tuple[Flask, Flask]:
    """Two services on the same models: one gets the replays, the other does not."""
    return make_app(), make_app()


@SERVICE
@given(plan=steps)
@example(
    plan=[
        ("score", 0, 0, 0, "payment", 10.0),
        ("score", 0, 1, 0, "transfer", 2.0),
        ("replay", 0, 0, 0, "payment", 1.0),
        ("label", 0, 0, 0, "payment", 1.0),
        ("label", 0, 0, 0, "payment", 1.0),
        ("conflict", 0, 0, 1, "payment", 1.0),
        ("score", 0, MINUTE_MS, 0, "payment", 5.0),
        ("replay", 0, 0, 2, "payment", 1.0),
        ("score", 1, 0, 0, "withdrawal", MAX_AMOUNT),
    ]
)
def test_idempotent_replays_change_nothing(
    twin_apps: tuple[Flask, Flask], plan: list[tuple[str, int, int, int, str, float]]
) -> None:
    """The same event_id again (same body: the stored answer; another body: 409) and the
    same label again leave every feature of every later event as if they were never sent."""
    with_replays, without = (app.test_client() for app in twin_apps)
    n = next(_SEQ)
    t = _now_ms() - 24 * HOUR_MS  # at most 14 steps of an hour: still in the past
    sent: list[dict[str, Any]] = []
    answers: dict[str, dict[str, Any]] = {}
    labelled: set[str] = set()
    for i, (action, account, step, pick, event_type, amount) in enumerate(plan):
        if action in ("replay", "conflict", "label") and sent:
            body = sent[pick % len(sent)]
            if action == "replay":
                assert _score(with_replays, body) == answers[body["event_id"]]
            elif action == "conflict":
                other = 0.02 if body["amount"] == 0.01 else 0.01
                response = with_replays.post("/score", json={**body, "amount": other})
                assert response.status_code == 409
                assert response.get_json()["field"] == "event_id"
            else:
                label = {
                    "event_id": body["event_id"],
                    "is_fraud": 1,
                    "label_time": body["timestamp"],
                    "source": "chargeback",
                }
                first = body["event_id"] not in labelled
                clients = (with_replays, without) if first else (with_replays,)
                for client in clients:  # the label once to both, again only to one
                    assert client.post("/feedback", json=label).status_code == 200
                labelled.add(body["event_id"])
            continue
        t += step
        body = {
            "event_id": f"idem-{n}-{i}",
            "timestamp": _iso(t),
            "account_id": f"idem-{n}-A{account}",
            "event_type": event_type,
            "amount": amount,
            "device_id": f"idem-{n}-D{account % 2}",
            "merchant_id": f"idem-{n}-M{i % 2}",
        }
        if event_type == "transfer":
            body["payee_account_id"] = f"idem-{n}-A{(account + 1) % 4}"
        answers[body["event_id"]] = _score(with_replays, body)
        assert _score(without, body) == answers[body["event_id"]]
        sent.append(body)
    for body in sent:
        assert _features(with_replays, body["event_id"]) == _features(without, body["event_id"])
    probe = {**sent[-1], "event_id": f"idem-{n}-probe", "timestamp": _iso(t + 1)}
    assert _score(with_replays, probe) == _score(without, probe)
    assert _features(with_replays, probe["event_id"]) == _features(without, probe["event_id"])


# -- late events -------------------------------------------------------------------------------
class LateSlots:
    """A service and, per example, a 6-hour slot of the past of its own: consecutive slots
    from 60 days ago, so the service's watermark (the newest timestamp it has seen) comes
    from the example's own events; a new service when the slots would reach the present."""

    SLOT_MS = 6 * HOUR_MS

    def __init__(self, make_app: AppFactory) -> None:
        self.make_app = make_app
        self.app: Flask | None = None
        self.next_start = 0

    def take(self) -> tuple[FlaskClient, int]:
        if self.app is None or self.next_start + self.SLOT_MS > _now_ms() - HOUR_MS:
            self.app = self.make_app()
            self.next_start = _now_ms() - 60 * DAY_MS
        start, self.next_start = self.next_start, self.next_start + self.SLOT_MS
        return self.app.test_client(), start


@pytest.fixture
def late_slots(make_app: AppFactory) -> LateSlots:
    return LateSlots(make_app)


@SERVICE
@given(
    arrivals=st.lists(
        st.one_of(
            st.sampled_from([0, 1, 300_000, 300_001, 10 * MINUTE_MS, HOUR_MS, HOUR_MS + 1]),
            st.integers(0, 5 * HOUR_MS),
        ),
        min_size=3,
        max_size=12,
    )
)
@example(arrivals=[300_000, 0])  # exactly MAX_LATENESS older: not late
@example(arrivals=[300_001, 0])  # 1 ms more: late
@example(arrivals=[HOUR_MS + 1, 0, 10 * MINUTE_MS])  # too late for the 1h window: dropped there
def test_late_events_follow_the_documented_rule(late_slots: LateSlots, arrivals: list[int]) -> None:
    """Arrival order is not time order. An event more than MAX_LATENESS_SECONDS (300 s)
    older than the newest seen is flagged late; every event (late or not) is scored on the
    account's state as it stands, its windows read at the newest time that account has
    seen; and late events are applied, so later events count them (the last, a probe)."""
    client, start = late_slots.take()
    account = f"late-{next(_SEQ)}"
    seen: list[int] = []
    for i, offset in enumerate([*arrivals, max(arrivals) + 1]):
        t = start + offset
        answer = _score(
            client,
            {"event_id": f"{account}-{i}", "timestamp": _iso(t), "account_id": account,
             "event_type": "payment", "amount": 10.0},
        )  # fmt: skip
        newest = max([t, *seen])
        assert answer["late"] is (t < newest - 300_000), (i, t - start, newest - start)
        features = _features(client, f"{account}-{i}")
        for window in ACCOUNT_WINDOWS:
            expected = sum(windows_count(s, newest, window) for s in seen)
            assert features[f"account_events_{window.label}"] == expected, (window.label, i)
        seen.append(t)


# -- extreme amounts and timestamps ----------------------------------------------------------
@SETTINGS
@given(worlds(starts=(0, T2024, T2200), max_events=12))
def test_extreme_worlds_have_no_infinities(
    world: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    """From the epoch to 2200, amounts from 0.01 to the maximum: online == offline, every
    feature finite or NaN (NaN: a missing entity, no history, no profile; never +-inf)."""
    events, accounts, applications = world
    online = _assert_parity(events, accounts, applications)
    assert not np.isinf(online).any()
    by_name = dict(zip(FEATURE_NAMES, online.T, strict=True))
    assert np.array_equal(by_name["amount"], events["amount"].to_numpy())
    assert np.isfinite(by_name["account_events_30d"]).all()  # the account is always named
    credit = compute_offline_credit_features(events, accounts, applications).to_numpy()
    assert not np.isinf(credit).any()


def test_the_engine_at_the_epoch_and_the_largest_amount() -> None:
    engine = OnlineFeatureEngine()
    for i, (ts, amount) in enumerate([(0, MAX_AMOUNT), (0, 0.01), (1, MAX_AMOUNT)]):
        x = engine.process(
            {"event_id": f"e{i}", "timestamp": pd.Timestamp(ts, unit="ms", tz="UTC"),
             "account_id": "a", "event_type": "payment", "amount": amount,
             "latitude": 0.0, "longitude": 0.0}
        )  # fmt: skip
        assert not np.isinf(x).any()
    f = dict(zip(FEATURE_NAMES, x, strict=True))
    assert f["account_amount_10m"] == MAX_AMOUNT + 0.01  # exact: summed in minor units
    assert f["speed_kmh_from_previous_location"] == 0.0  # equal place, 1 ms apart: no inf
    assert f["hour_of_day"] == 0.0 and f["day_of_week"] == 3.0  # 1970-01-01 was a Thursday


_GOOD_AMOUNTS = ["0.01", "1", "2.01", "999999999.99", "1000000000", "1e9", "1.5e2"]
_BAD_AMOUNTS = [
    "0", "-0.01", "0.001", "1000000000.01", "1e400", "-1e400", "1e-400", "1e308",
    "18446744073709551616", "100000000000000000000000", "true", '"10"', "null", "[]", "{}",
]  # fmt: skip


_EXTREME_INSTANTS = [
    "1970-01-01T00:00:00Z",  # the earliest accepted
    "1970-01-01T00:00:00.001Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "2026-01-01T00:00:00-23:59",
    "+002026-01-01T00:00:00Z",
    "",
]
instants = st.one_of(
    st.sampled_from(_EXTREME_INSTANTS),
    st.integers(-5 * MINUTE_MS, 5 * MINUTE_MS).map(lambda d: ("now", d)),  # MAX_FUTURE edge
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.sampled_from([UTC, None]),
    ).map(lambda dt: dt.isoformat()),
)
money_texts = st.one_of(  # JSON number texts (and a few non-numbers) for the amount
    st.sampled_from(_GOOD_AMOUNTS + _BAD_AMOUNTS),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**30), 10**30).map(str),
)


@settings(SERVICE, max_examples=150)  # about 1 ms each
@given(
    amount=money_texts,
    timestamp=instants,
    kind=st.sampled_from(["payment", "credit_application"]),
)
def test_extreme_amounts_and_timestamps_through_score(
    app: Flask, amount: str, timestamp: Any, kind: str
) -> None:
    """200, or a 400 naming the field (amount / requested_limit, timestamp); never a 5xx."""
    client = app.test_client()
    if isinstance(timestamp, tuple):
        timestamp = _iso(_now_ms() + timestamp[1])
    money = "amount" if kind == "payment" else "requested_limit"
    n = next(_SEQ)
    template = {"event_id": f"x-{n}", "timestamp": timestamp, "account_id": f"x-{n}",
                "event_type": kind, money: "AMOUNT"}  # fmt: skip
    raw = orjson.dumps(template).replace(b'"AMOUNT"', amount.encode())
    response = client.post("/score", data=raw, content_type="application/json")
    payload = response.get_json()
    assert response.status_code in (200, 400), (response.status_code, payload, raw)
    if response.status_code == 400:
        assert payload["field"] in (money, "timestamp"), (payload, raw)
    else:
        probability = payload["fraud"]["probability"] if payload["fraud"] else None
        assert probability is None or 0.0 <= probability <= 1.0
