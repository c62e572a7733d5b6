"""Each fraud scenario leaves its documented trace; look-alikes exist; credit carries signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from training.simulate import World, generate_world

START = pd.Timestamp("2026-08-01", tz="UTC")


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(accounts=500, days=60, seed=0)


@pytest.fixture(scope="module")
def events(world: World) -> pd.DataFrame:
    return world.events


def _scenario(e: pd.DataFrame, name: str) -> pd.DataFrame:
    return e[e["fraud_scenario"] == name]


def _good(e: pd.DataFrame) -> pd.DataFrame:
    return e[e["is_fraud"] == 0]


def _km(lat1: pd.Series, lon1: pd.Series, lat2: pd.Series, lon2: pd.Series) -> np.ndarray:
    p1, p2 = np.radians(lat1.to_numpy()), np.radians(lat2.to_numpy())
    dl = np.radians(lon2.to_numpy() - lon1.to_numpy())
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371 * np.arcsin(np.sqrt(h))


def _pairs(df: pd.DataFrame, a: str, b: str) -> set[tuple[str, str]]:
    return set(zip(df[a], df[b], strict=True))


def test_promotion_abuse_farms_share_devices(events: pd.DataFrame, world: World) -> None:
    abuse = _scenario(events, "promotion_abuse")
    per_device = abuse.groupby("device_id")["account_id"].nunique()
    good_per_device = _good(events).groupby("device_id")["account_id"].nunique()
    # most farm accounts sit on a phone shared with 3+ farm accounts; good phones are personal
    shared = abuse["device_id"].map(per_device) >= 3
    assert shared.mean() > 0.5 and good_per_device.median() == 1
    assert (abuse["amount"] <= 30.0).all() and (abuse["amount"] <= 1.0).mean() > 0.3
    created = world.accounts.set_index("account_id")["created_at"]
    assert (created[abuse["account_id"].unique()] >= START).all()
    assert abuse["merchant_id"].nunique() <= 2 * abuse["device_id"].nunique()


def test_card_testing_bursts_then_a_big_one(events: pd.DataFrame) -> None:
    ct = _scenario(events, "card_testing")
    for _, g in ct.groupby("device_id"):
        tiny = g[g["amount"] <= 2.0]
        minutes = (tiny["timestamp"].max() - tiny["timestamp"].min()).total_seconds() / 60
        assert len(tiny) >= 5 and tiny["merchant_id"].nunique() >= 4
        per_card = tiny.groupby("instrument_id")["timestamp"].agg(lambda s: s.max() - s.min())
        assert (per_card <= pd.Timedelta(minutes=20)).all(), minutes
        assert (g["amount"] > 100).any()
        assert g.loc[g["amount"] > 100, "timestamp"].min() > tiny["timestamp"].min()


def test_account_takeover_new_device_and_new_payees(events: pd.DataFrame) -> None:
    ato = _scenario(events, "account_takeover")
    good = _good(events)
    # takeovers come from a new device; scams (about 30%) from the victim's own phone
    known_devices = _pairs(good, "account_id", "device_id")
    own = [p in known_devices for p in _pairs(ato, "account_id", "device_id")]
    assert 0.1 < np.mean(own) < 0.5
    transfers = ato[ato["event_type"] == "transfer"]
    known = _pairs(good[good["event_type"] == "transfer"], "account_id", "payee_account_id")
    fresh = [p not in known for p in _pairs(transfers, "account_id", "payee_account_id")]
    assert np.mean(fresh) > 0.9
    assert ato["event_type"].isin(["transfer", "withdrawal"]).all()
    span = ato.groupby("account_id")["timestamp"].agg(lambda s: s.max() - s.min())
    assert (span <= pd.Timedelta(hours=1)).all()


def test_stolen_card_online_unfamiliar_and_far_above_habit(events: pd.DataFrame) -> None:
    sc = _scenario(events, "stolen_card")
    good = _good(events)
    resale = sc["merchant_category"].isin(["digital_goods", "electronics", "luxury", "gaming"])
    assert 0.35 < resale.mean() < 0.8  # the rest at big mainstream online shops
    assert sc["channel"].isin(["web", "app"]).all() and (sc["channel"] == "web").mean() > 0.35
    assert not _pairs(sc, "account_id", "device_id") & _pairs(good, "account_id", "device_id")
    usual = good[good["event_type"] == "payment"].groupby("account_id")["amount"].median()
    ratio = sc["amount"].to_numpy() / usual.reindex(sc["account_id"]).to_numpy()
    assert np.nanmedian(ratio) > 5


def test_compromised_merchant_window(events: pd.DataFrame) -> None:
    cm = _scenario(events, "compromised_merchant")
    pays = events[events["event_type"] == "payment"]
    for merchant, g in cm.groupby("merchant_id"):
        at = pays[pays["merchant_id"] == merchant]
        inside = at["timestamp"].between(g["timestamp"].min(), g["timestamp"].max())
        assert at.loc[inside, "is_fraud"].mean() > 0.6
        assert at.loc[~inside, "is_fraud"].sum() == 0
    # the victims are the terminal's ordinary customers (their usual devices)
    good = _good(events)
    assert (
        np.mean(
            [
                p in _pairs(good, "account_id", "device_id")
                for p in _pairs(cm, "account_id", "device_id")
            ]
        )
        > 0.8
    )


def test_credit_cash_out_round_amounts_on_fresh_line(events: pd.DataFrame, world: World) -> None:
    co = _scenario(events, "credit_cash_out")
    assert (co["funding_source"] == "credit_line").all()
    assert (co["amount"] % 500 == 0).mean() > 0.5 and (co["amount"] >= 400).all()
    assert co.groupby("account_id")["merchant_id"].nunique().max() == 1
    credit = world.credit[world.credit["account_id"].isin(co["account_id"])]
    assert (credit["defaulted"] == 1).all() and (credit["application_type"] == "application").all()
    applied = credit.groupby("account_id")["timestamp"].min()
    first_spend = co.groupby("account_id")["timestamp"].min()
    lag = first_spend - applied.reindex(first_spend.index)
    assert (lag > pd.Timedelta(0)).all() and (lag < pd.Timedelta(days=1)).all()


def test_mules_receive_from_many_and_move_money_within_minutes(events: pd.DataFrame) -> None:
    mule_ev = _scenario(events, "mule")
    incoming = mule_ev[
        mule_ev["payee_account_id"].notna()
        & ~mule_ev["account_id"].isin(mule_ev["payee_account_id"])
    ]
    mules = incoming["payee_account_id"].unique()
    assert incoming.groupby("payee_account_id")["account_id"].nunique().min() >= 5
    out = mule_ev[mule_ev["account_id"].isin(mules)]
    assert out["event_type"].isin(["transfer", "withdrawal"]).all()
    for mule in mules:
        t_in = np.sort(incoming.loc[incoming["payee_account_id"] == mule, "timestamp"].to_numpy())
        t_out = out.loc[out["account_id"] == mule, "timestamp"].to_numpy()
        prev = t_in[np.searchsorted(t_in, t_out, side="right") - 1]
        assert ((t_out - prev) <= np.timedelta64(15, "m")).all()


def test_look_alikes_exist_among_good_events(events: pd.DataFrame, world: World) -> None:
    good = _good(events)
    home = world.accounts.set_index("account_id").loc[good["account_id"]]
    far = (
        _km(good["latitude"], good["longitude"], home["home_latitude"], home["home_longitude"])
        > 300
    )
    assert far.mean() > 0.005  # travel
    devices = good.groupby("account_id")["device_id"].nunique()
    assert (devices > 1).mean() > 0.2  # second devices and new phones
    assert (good["amount"] <= 2.0).sum() > 50  # small genuine payments, like card tests
    assert (good["amount"] > 2000).sum() > 20  # big genuine purchases
    assert good.groupby("ip_address")["account_id"].nunique().max() > 10  # carrier NAT
    # red packets, gift money and shop takings: many payers to one payee within an hour
    tr = good[good["event_type"] == "transfer"].copy()
    tr["hour"] = tr["timestamp"].dt.floor("h")
    payers = tr.groupby(["payee_account_id", "hour"])["account_id"].nunique()
    assert (payers >= 5).sum() >= 3
    # gaming sessions: 5+ payments of at most 2.00 from one device within ten minutes
    tiny = good[(good["event_type"] == "payment") & (good["amount"] <= 2.0)].copy()
    tiny["slot"] = tiny["timestamp"].dt.floor("10min")
    assert (tiny.groupby(["device_id", "slot"]).size() >= 4).sum() >= 3
    # shared family tablets and good customers on the VPN exit IPs fraudsters use
    assert (good.groupby("device_id")["account_id"].nunique() >= 2).sum() > 5
    # a fresh credit line spent at once on one big purchase
    line = good[good["funding_source"] == "credit_line"]
    assert (line["amount"] > 2000).sum() > 5


def test_credit_default_rate_and_signal() -> None:
    w = generate_world(accounts=4000, days=90, seed=3)
    c = w.credit
    assert 0.05 <= c["defaulted"].mean() <= 0.15
    x = c.join(w.accounts.set_index("account_id"), on="account_id")
    feats = pd.DataFrame(
        {
            "kyc": x["kyc_level"],
            "age": x["age"],
            "log_income": np.log(x["monthly_income"]),
            "tenure": (x["timestamp"] - x["created_at"]).dt.days,
            "ask": np.log(x["requested_limit"] / x["monthly_income"]),
        }
    )
    feats = (feats - feats.mean()) / feats.std()
    model = LogisticRegression(max_iter=1000)
    p = cross_val_predict(model, feats, c["defaulted"], cv=5, method="predict_proba")[:, 1]
    assert 0.6 <= roc_auc_score(c["defaulted"], p) <= 0.9
