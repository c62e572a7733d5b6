"""The policy file: loading and its errors, the condition language, and every precedence path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from risk_service.features.spec import CREDIT_FEATURE_NAMES, FEATURE_NAMES
from risk_service.policy import Policy, PolicyError, default_policy_path
from risk_service.requests import REQUEST_FIELDS
from risk_service.scores import DECISIONS

KNOWN = set(FEATURE_NAMES) | set(CREDIT_FEATURE_NAMES) | REQUEST_FIELDS

POLICY = """
version = "test-1"

[[rules]]
name = "new_device_large"
when = [["is_new_device_for_account", "==", 1], ["amount", ">", 1000]]
action = "challenge"
reason = "new device, large amount"

[[rules]]
name = "withdrawal_new_device"
when = [["event_type", "==", "withdrawal"], ["is_new_device_for_account", "==", 1]]
action = "review"
reason = "withdrawal from a new device"

[[rules]]
name = "impossible_travel"
when = [["speed_kmh_from_previous_location", ">", 2000], ["amount", ">", 500]]
action = "decline"
reason = "impossible travel"

[lists.allow]
accounts = ["vip"]
devices = ["trusted-device"]

[lists.block]
devices = ["bad-device"]
ips = ["6.6.6.6"]
payees = ["mule-1"]
"""


def load(tmp_path: Path, text: str, known: set[str] = KNOWN) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return Policy.load(path, known)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load(tmp_path, POLICY)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_type": "payment", "account_id": "a1", "amount": 50.0}
    base.update(fields)
    return base


# ------------------------------------------------------------------ precedence
def test_block_list_declines_whatever_the_model_says(policy: Policy) -> None:
    out = policy.evaluate(event(device_id="bad-device"), {}, "approve")
    assert (out.decision, out.source) == ("decline", "block_list")
    assert out.rules_fired == [
        {
            "name": "block_list:devices",
            "action": "decline",
            "reason": "the device is on the block list",
        }
    ]


def test_block_beats_allow(policy: Policy) -> None:
    out = policy.evaluate(event(account_id="vip", ip_address="6.6.6.6"), {}, "approve")
    assert (out.decision, out.source) == ("decline", "block_list")


def test_payee_block_list(policy: Policy) -> None:
    out = policy.evaluate(event(event_type="transfer", payee_account_id="mule-1"), {}, "approve")
    assert out.decision == "decline"


def test_allow_list_approves_over_rules_and_model(policy: Policy) -> None:
    feats = {"speed_kmh_from_previous_location": 5000.0}
    out = policy.evaluate(event(account_id="vip", amount=900.0), feats, "decline")
    assert (out.decision, out.source) == ("approve", "allow_list")
    assert [r["name"] for r in out.rules_fired] == ["allow_list:accounts"]
    out = policy.evaluate(event(device_id="trusted-device"), {}, "review")
    assert out.decision == "approve"


def test_rules_escalate_over_the_model(policy: Policy) -> None:
    feats = {"is_new_device_for_account": 1.0}
    out = policy.evaluate(event(amount=2000.0), feats, "approve")
    assert (out.decision, out.source) == ("challenge", "rules")
    assert [r["name"] for r in out.rules_fired] == ["new_device_large"]


def test_most_severe_fired_rule_wins(policy: Policy) -> None:
    feats = {"is_new_device_for_account": 1.0, "speed_kmh_from_previous_location": 3000.0}
    out = policy.evaluate(event(event_type="withdrawal", amount=2000.0), feats, "challenge")
    assert out.decision == "decline"
    assert [r["name"] for r in out.rules_fired] == [
        "new_device_large",
        "withdrawal_new_device",
        "impossible_travel",
    ]
    assert [r["action"] for r in out.rules_fired] == ["challenge", "review", "decline"]


def test_rules_never_lower_the_model(policy: Policy) -> None:
    feats = {"is_new_device_for_account": 1.0}
    out = policy.evaluate(event(amount=2000.0), feats, "review")
    assert (out.decision, out.source) == ("review", "model")
    assert [r["name"] for r in out.rules_fired] == ["new_device_large"]


def test_no_rule_fired_gives_the_model_decision(policy: Policy) -> None:
    for decision in DECISIONS:
        out = policy.evaluate(event(), {"is_new_device_for_account": 0.0}, decision)
        assert (out.decision, out.rules_fired, out.source) == (decision, [], "model")


def test_degraded_answers_follow_fail_mode(tmp_path: Path) -> None:
    closed = load(tmp_path, POLICY)
    assert closed.fail_mode == "closed"
    out = closed.evaluate(event(), {}, None)
    assert (out.decision, out.source) == ("review", "fail_mode")
    opened = load(tmp_path, 'fail_mode = "open"\n' + POLICY)
    assert opened.evaluate(event(), {}, None).decision == "approve"
    # rules on request-time fields still escalate a degraded answer
    out = opened.evaluate(event(event_type="withdrawal"), {"is_new_device_for_account": 1}, None)
    assert (out.decision, out.source) == ("review", "rules")
    # and lists still apply
    assert opened.evaluate(event(device_id="bad-device"), {}, None).decision == "decline"


def test_unknown_model_decision_is_a_programming_error(policy: Policy) -> None:
    with pytest.raises(ValueError, match="model_decision"):
        policy.evaluate(event(), {}, "maybe")


# ------------------------------------------------------------------ condition language
@pytest.mark.parametrize(
    ("clause", "value", "fires"),
    [
        (["amount", "==", 10], 10.0, True),
        (["amount", "!=", 10], 11.0, True),
        (["amount", ">", 10], 10.0, False),
        (["amount", ">=", 10], 10.0, True),
        (["amount", "<", 10], 9.99, True),
        (["amount", "<=", 10], 10.01, False),
        (["amount", "in", [1, 2, 3]], 2.0, True),
        (["amount", "not_in", [1, 2, 3]], 2.0, False),
        (["amount", "not_in", [1, 2, 3]], 4.0, True),
        (["amount", ">", 10], None, False),  # missing makes any clause false ...
        (["amount", "!=", 10], None, False),
        (["amount", "not_in", [1]], None, False),
        (["amount", "<", 10], math.nan, False),  # ... NaN too
        (["amount", "!=", 10], math.nan, False),
        (["amount", ">", 10], "text", False),  # wrong type: false, never an exception
    ],
)
def test_operators(tmp_path: Path, clause: list[Any], value: Any, fires: bool) -> None:
    text = f"""
version = "t"
[[rules]]
name = "r"
when = [{_toml(clause)}]
action = "review"
reason = "r"
"""
    p = load(tmp_path, text)
    ev = {} if value is None else {"amount": value}
    out = p.evaluate(ev, {}, "approve")
    assert (out.decision == "review") is fires


def _toml(clause: list[Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v)

    return one(clause)


def test_request_fields_are_read_before_features(policy: Policy) -> None:
    # the feature "event_type" is a code; rules compare the request's string
    feats = {"event_type": 2.0, "is_new_device_for_account": 1.0}
    out = policy.evaluate(event(event_type="withdrawal"), feats, "approve")
    assert out.decision == "review"


def test_missing_feature_makes_rule_not_fire(policy: Policy) -> None:
    out = policy.evaluate(event(amount=5000.0), {}, "approve")
    assert (out.decision, out.rules_fired) == ("approve", [])


# ------------------------------------------------------------------ file errors
RULE = """
[[rules]]
name = "r1"
when = [["amount", ">", 1]]
action = "review"
reason = "because"
"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "version"),
        ('version = ""', "version"),
        ('version = "v"\nfail_mode = "ajar"', "fail_mode"),
        ('version = "v"\nrulez = []', "unknown top-level key 'rulez'"),
        ('version = "v"\n' + RULE.replace('"review"', '"freeze"'), "rule 'r1': unknown action"),
        ('version = "v"\n' + RULE.replace('">"', '"~="'), "rule 'r1', clause 1: unknown operator"),
        ('version = "v"\n' + RULE.replace('"amount"', '"ammount"'), "unknown field 'ammount'"),
        ('version = "v"\n' + RULE.replace('">", 1', '">", "big"'), "needs a number"),
        ('version = "v"\n' + RULE.replace('">", 1', '"in", 1'), "non-empty array"),
        ('version = "v"\n' + RULE.replace('">", 1', '"==", [1]'), "string or number"),
        ('version = "v"\n' + RULE.replace('["amount", ">", 1]', '["amount", ">"]'), "clause 1"),
        ('version = "v"\n' + RULE.replace('[["amount", ">", 1]]', "[]"), "non-empty array"),
        ('version = "v"\n' + RULE.replace('reason = "because"', ""), "rule 'r1': reason"),
        ('version = "v"\n' + RULE.replace('name = "r1"', ""), r"rules\[0\]: name"),
        ('version = "v"\n' + RULE.replace("action", "priority = 1\naction"), "unknown key"),
        ('version = "v"\n' + RULE + RULE, "rule 'r1': the name is used twice"),
        ('version = "v"\n[lists.allow]\ncards = ["x"]', "lists.allow: unknown list 'cards'"),
        ('version = "v"\n[lists.allow]\npayees = ["x"]', "unknown list 'payees'"),
        ('version = "v"\n[lists.block]\ndevices = [""]', "lists.block.devices"),
        ('version = "v"\n[lists.block]\ndevices = "d1"', "lists.block.devices"),
        ('version = "v"\n[lists.grey]\ndevices = []', "lists: unknown key 'grey'"),
        ("version = ", "not valid TOML"),
    ],
)
def test_bad_policy_files_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as info:
        load(tmp_path, text)
    assert "policy.toml" in str(info.value)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "nope.toml", KNOWN)


def test_known_fields_come_from_the_caller(tmp_path: Path) -> None:
    text = 'version = "v"\n' + RULE
    assert load(tmp_path, text, {"amount"}).rules[0].name == "r1"
    with pytest.raises(PolicyError, match="unknown field 'amount'"):
        load(tmp_path, text, {"something_else"})


# ------------------------------------------------------------------ the shipped policy
def test_default_policy_loads_against_the_real_feature_names() -> None:
    p = Policy.load(default_policy_path(), KNOWN)
    assert p.version == "policy-2026-11-1"
    assert len(p.rules) >= 5
    assert all(not members for members in (*p.allow.values(), *p.block.values()))
    assert len(p.digest) == 64
    quiet = {name: 0.0 for name in FEATURE_NAMES}
    assert p.evaluate(event(), quiet, "approve").decision == "approve"
    risky = dict(quiet, is_new_device_for_account=1.0)
    out = p.evaluate(event(event_type="withdrawal", amount=3000.0), risky, "approve")
    assert out.decision == "review"
    assert {"new_device_large_amount", "withdrawal_from_new_device"} <= {
        r["name"] for r in out.rules_fired
    }
    credit = {"event_type": "credit_application", "account_id": "a", "requested_limit": 1.0}
    assert p.evaluate(credit, {"kyc_level": 1.0}, "approve").decision == "review"
