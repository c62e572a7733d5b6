"""The versioned policy file: allow/block lists, rules over fields and features, and precedence.

A policy is a TOML file (format and examples: ``docs/policy.md``) with a
``version``, an optional ``fail_mode``, ``[[rules]]`` and ``[lists]``. It is
validated completely when loaded, so a bad file fails at start-up with an error
naming the rule and the bad part, never on a request.

Precedence, applied by ``Policy.evaluate``:

1. **Block list** (any of the event's account, device, IP, instrument, merchant or
   payee on a block list) -> ``decline``. Nothing overrides a block.
2. **Allow list** (the event's account, device, IP, instrument or merchant on an
   allow list, and nothing blocked) -> ``approve``, whatever the rules and the
   model say. This is the only way to lower the model's decision.
3. **Rules**: every rule whose clauses all hold fires; the rules' action is the
   most severe among those that fired.
4. **Final decision** = the more severe of the rules' action and the model's
   threshold decision (approve < challenge < review < decline): rules only escalate.

When the model could not score (a degraded answer, ``model_decision=None``), the
model's place in step 4 is taken by ``fail_mode``: ``open`` -> approve,
``closed`` -> review (the default).

The condition language is deliberately small and has no ``eval``: ``when`` is a
list of clauses ``[field, operator, value]`` that must all hold; operators are
``== != > >= < <= in not_in``. A field is looked up in the request's event first
(so ``event_type`` compares as the string ``"withdrawal"``, not as a feature
code), then among the features. A missing value (absent, None or NaN) makes the
clause false, whatever the operator; so does a value of the wrong type.
"""

from __future__ import annotations

import hashlib
import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from risk_service.scores import DECISIONS

SEVERITY: dict[str, int] = {name: i for i, name in enumerate(DECISIONS)}
FAIL_MODES: dict[str, str] = {"open": "approve", "closed": "review"}
DEFAULT_FAIL_MODE = "closed"

# List kind -> the event field it is compared with (raw identifiers, exact match).
LIST_FIELDS: dict[str, str] = {
    "accounts": "account_id",
    "devices": "device_id",
    "ips": "ip_address",
    "instruments": "instrument_id",
    "merchants": "merchant_id",
    "payees": "payee_account_id",
}
_LIST_NOUN = {
    "accounts": "account",
    "devices": "device",
    "ips": "IP address",
    "instruments": "instrument",
    "merchants": "merchant",
    "payees": "payee",
}
ALLOW_KINDS: tuple[str, ...] = ("accounts", "devices", "ips", "instruments", "merchants")
BLOCK_KINDS: tuple[str, ...] = tuple(LIST_FIELDS)

_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_EQUALITY: dict[str, Callable[[Any, Any], bool]] = {"==": operator.eq, "!=": operator.ne}
OPERATORS: tuple[str, ...] = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in")
_TOP_KEYS = frozenset({"version", "fail_mode", "description", "rules", "lists"})
_RULE_KEYS = frozenset({"name", "when", "action", "reason"})


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, rule and bad part."""


@dataclass(frozen=True, slots=True)
class Clause:
    """``field op value``; false when the field is missing or of the wrong type."""

    field: str
    op: str
    value: Any
    _test: Callable[[Any, Any], bool]

    def holds(self, event: Mapping[str, Any], features: Mapping[str, Any]) -> bool:
        x = event.get(self.field)
        if x is None:
            x = features.get(self.field)
            if x is None:
                return False
        if x != x:  # NaN: missing
            return False
        try:
            return self._test(x, self.value)
        except TypeError:  # e.g. a string compared with > to a number
            return False


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    clauses: tuple[Clause, ...]
    action: str
    reason: str

    def fires(self, event: Mapping[str, Any], features: Mapping[str, Any]) -> bool:
        return all(c.holds(event, features) for c in self.clauses)


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """The policy's decision, every rule or list entry that contributed, and what decided.

    ``source`` is one of ``block_list``, ``allow_list``, ``rules`` (a rule was
    more severe than the model), ``model`` or ``fail_mode`` (degraded, and no
    rule was more severe).
    """

    decision: str
    rules_fired: list[dict[str, str]]
    source: str


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy. Build with ``Policy.load`` or ``Policy.from_dict``."""

    version: str
    rules: tuple[Rule, ...]
    allow: dict[str, frozenset[str]]
    block: dict[str, frozenset[str]]
    fail_mode: str = DEFAULT_FAIL_MODE
    digest: str = ""  # SHA-256 of the file's bytes, for the decision log
    source: str = "<dict>"
    _allow_pairs: tuple[tuple[str, str, frozenset[str]], ...] = field(default=(), repr=False)
    _block_pairs: tuple[tuple[str, str, frozenset[str]], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        def pairs(lists: dict[str, frozenset[str]]) -> tuple[tuple[str, str, frozenset[str]], ...]:
            return tuple((k, LIST_FIELDS[k], v) for k, v in lists.items() if v)

        object.__setattr__(self, "_allow_pairs", pairs(self.allow))
        object.__setattr__(self, "_block_pairs", pairs(self.block))

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, known_fields: Iterable[str]) -> Policy:
        """Read and validate a TOML policy file; ``known_fields``: names rules may use."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise PolicyError(f"{p}: cannot read the policy file: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{p}: not valid TOML: {exc}") from None
        return cls.from_dict(
            data, known_fields, source=str(p), digest=hashlib.sha256(raw).hexdigest()
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        known_fields: Iterable[str],
        *,
        source: str = "<dict>",
        digest: str = "",
    ) -> Policy:
        """Validate a decoded policy document (what ``tomllib`` returns)."""
        known = frozenset(known_fields)
        where = source

        def fail(message: str) -> PolicyError:
            return PolicyError(f"{where}: {message}")

        extra = sorted(set(data) - _TOP_KEYS)
        if extra:
            raise fail(f"unknown top-level key {extra[0]!r}; expected {sorted(_TOP_KEYS)}")
        version = data.get("version")
        if not isinstance(version, str) or not version.strip():
            raise fail("version must be a non-empty string")
        fail_mode = data.get("fail_mode", DEFAULT_FAIL_MODE)
        if fail_mode not in FAIL_MODES:
            raise fail(f"fail_mode must be one of {sorted(FAIL_MODES)}, got {fail_mode!r}")
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise fail("rules must be an array of tables ([[rules]])")
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_rules):
            rule = _parse_rule(raw, i, known, fail)
            if rule.name in seen:
                raise fail(f"rule {rule.name!r}: the name is used twice")
            seen.add(rule.name)
            rules.append(rule)
        allow, block = _parse_lists(data.get("lists", {}), fail)
        return cls(version, tuple(rules), allow, block, fail_mode, digest, source)

    # -- evaluating ------------------------------------------------------------------------
    @property
    def fail_decision(self) -> str:
        """The decision standing in for the model when it could not score."""
        return FAIL_MODES[self.fail_mode]

    def evaluate(
        self,
        event: Mapping[str, Any],
        features: Mapping[str, Any],
        model_decision: str | None,
    ) -> PolicyOutcome:
        """Apply lists, rules and the model's decision in the documented precedence.

        ``model_decision`` is the model's threshold decision, or None when the
        answer is degraded (then ``fail_mode`` stands in for it).
        """
        hits = _list_hits(self._block_pairs, event, "decline", "block")
        if hits:
            return PolicyOutcome("decline", hits, "block_list")
        hits = _list_hits(self._allow_pairs, event, "approve", "allow")
        if hits:
            return PolicyOutcome("approve", hits, "allow_list")

        if model_decision is None:
            base, base_source = self.fail_decision, "fail_mode"
        elif model_decision in SEVERITY:
            base, base_source = model_decision, "model"
        else:
            raise ValueError(f"model_decision must be one of {DECISIONS}, got {model_decision!r}")
        fired: list[dict[str, str]] = []
        worst = -1
        for rule in self.rules:
            for clause in rule.clauses:  # a plain loop: this runs on every request
                if not clause.holds(event, features):
                    break
            else:
                fired.append({"name": rule.name, "action": rule.action, "reason": rule.reason})
                worst = max(worst, SEVERITY[rule.action])
        if worst > SEVERITY[base]:
            return PolicyOutcome(DECISIONS[worst], fired, "rules")
        return PolicyOutcome(base, fired, base_source)


def _list_hits(
    pairs: tuple[tuple[str, str, frozenset[str]], ...],
    event: Mapping[str, Any],
    action: str,
    which: str,
) -> list[dict[str, str]]:
    """One entry per matching list; the reason never repeats the (personal) identifier."""
    hits: list[dict[str, str]] = []
    for kind, column, members in pairs:
        value = event.get(column)
        if value is not None and value in members:
            hits.append(
                {
                    "name": f"{which}_list:{kind}",
                    "action": action,
                    "reason": f"the {_LIST_NOUN[kind]} is on the {which} list",
                }
            )
    return hits


def _parse_rule(
    raw: Any, index: int, known: frozenset[str], fail: Callable[[str], PolicyError]
) -> Rule:
    if not isinstance(raw, dict):
        raise fail(f"rules[{index}] must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(f"rules[{index}]: name must be a non-empty string")
    label = f"rule {name!r}"
    extra = sorted(set(raw) - _RULE_KEYS)
    if extra:
        raise fail(f"{label}: unknown key {extra[0]!r}; expected {sorted(_RULE_KEYS)}")
    action = raw.get("action")
    if action not in SEVERITY:
        raise fail(f"{label}: unknown action {action!r}; expected one of {list(DECISIONS)}")
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise fail(f"{label}: reason must be a non-empty string")
    when = raw.get("when")
    if not isinstance(when, list) or not when:
        raise fail(f"{label}: when must be a non-empty array of [field, operator, value] clauses")
    clauses = tuple(
        _parse_clause(c, f"{label}, clause {j + 1}", known, fail) for j, c in enumerate(when)
    )
    return Rule(name, clauses, action, reason)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float))  # bool is an int: fine for == 1 / true


def _parse_clause(
    raw: Any, label: str, known: frozenset[str], fail: Callable[[str], PolicyError]
) -> Clause:
    if not isinstance(raw, list) or len(raw) != 3:
        raise fail(f"{label}: a clause is [field, operator, value], got {raw!r}")
    name, op, value = raw
    if not isinstance(name, str) or name not in known:
        raise fail(f"{label}: unknown field {name!r} (not a request field or feature name)")
    if op in _ORDERING:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"{label}: operator {op!r} needs a number, got {value!r}")
        return Clause(name, op, value, _ORDERING[op])
    if op in _EQUALITY:
        if not _is_scalar(value):
            raise fail(f"{label}: operator {op!r} needs a string or number, got {value!r}")
        return Clause(name, op, value, _EQUALITY[op])
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            raise fail(f"{label}: operator {op!r} needs a non-empty array of strings or numbers")
        members = frozenset(value)
        test = _member if op == "in" else _not_member
        return Clause(name, op, members, test)
    raise fail(f"{label}: unknown operator {op!r}; expected one of {list(OPERATORS)}")


def _member(x: Any, members: frozenset[Any]) -> bool:
    return x in members


def _not_member(x: Any, members: frozenset[Any]) -> bool:
    return x not in members


def _parse_lists(
    raw: Any, fail: Callable[[str], PolicyError]
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    if not isinstance(raw, dict):
        raise fail("lists must be a table with allow and block tables")
    extra = sorted(set(raw) - {"allow", "block"})
    if extra:
        raise fail(f"lists: unknown key {extra[0]!r}; expected 'allow' and 'block'")
    out: list[dict[str, frozenset[str]]] = []
    for which, kinds in (("allow", ALLOW_KINDS), ("block", BLOCK_KINDS)):
        table = raw.get(which, {})
        if not isinstance(table, dict):
            raise fail(f"lists.{which} must be a table")
        bad = sorted(set(table) - set(kinds))
        if bad:
            raise fail(f"lists.{which}: unknown list {bad[0]!r}; expected one of {list(kinds)}")
        lists: dict[str, frozenset[str]] = {}
        for kind in kinds:
            values = table.get(kind, [])
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise fail(f"lists.{which}.{kind} must be an array of non-empty strings")
            lists[kind] = frozenset(values)
        out.append(lists)
    allow, block = out
    return allow, block


def default_policy_path() -> Path:
    """The policy shipped with the package (``risk_service/policies/default.toml``)."""
    return Path(__file__).resolve().parent / "policies" / "default.toml"


__all__ = [
    "FAIL_MODES",
    "LIST_FIELDS",
    "OPERATORS",
    "Policy",
    "PolicyError",
    "PolicyOutcome",
    "Rule",
    "default_policy_path",
]
