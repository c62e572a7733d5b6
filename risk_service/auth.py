"""API keys and scopes: which key may call which endpoint, and the brake on failed attempts.

No Flask here: `risk_service.web` reads the request and answers; this module owns the key ring
(loading, hashing, constant-time lookup), the endpoint → scope table, loopback checks and the
per-address failure limiter.

**Where keys come from** (both may be given; ids must be unique across them):

* ``API_KEYS`` (``RISK_API_KEYS``), for development: comma-separated keys, each either
  ``KEY`` (every scope) or ``KEY:scope1+scope2``. Their ids are ``env-1``, ``env-2``, … in
  order. A key is a b64token (letters, digits, ``-._~+/``, trailing ``=``) of 32 to 512
  characters. They are hashed as soon as they are read; the clear text is not kept.
* ``API_KEYS_FILE`` (``RISK_API_KEYS_FILE``): a TOML or JSON file (by its ``.toml`` or
  ``.json`` name; a name without either, such as a mounted secret, is read as whichever it
  is) of entries ``{id, sha256, scopes}``, the SHA-256 of the key in hex; the file never
  holds a key. ``risk keys create --id NAME --scopes score,read`` makes a key and its entry::

      [[keys]]
      id = "checkout"
      sha256 = "5f1c…64 hex digits…"
      scopes = ["score", "read"]

  JSON: ``{"keys": [{"id": "checkout", "sha256": "…", "scopes": ["score", "read"]}]}``.

**Why plain SHA-256 is enough.** Password hashes (bcrypt, scrypt, Argon2) are slow and salted
because passwords are guessable: a leaked hash is attacked with a dictionary. The keys here are
32 random bytes (256 bits, `new_key`); nobody can enumerate that space, slow hash or not, so a
leaked SHA-256 of a key is as useless as the key's ciphertext would be, and a fast hash keeps
authentication at about a microsecond per request. Env keys are refused under 32 characters.

**Constant time.** The presented key is hashed, and its digest is compared with
`hmac.compare_digest` against every entry, without stopping at a match, so the time taken says
neither whether nor where a key matched (comparing digests, not keys, also hides the length).

**Scopes.** ``score`` (POST /score), ``feedback`` (POST /feedback), ``read`` (GET
/decisions/…, GET /models), ``admin`` (everything under /admin/): `SCOPE_TABLE`. Other routes
need some valid key, except the open ones (`OPEN_ENDPOINTS`: /health, /ready, /metrics,
/openapi.json, /docs by default). With no key configured at all the service answers loopback
clients only (and `risk serve` binds only to a loopback address).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCORE, FEEDBACK, READ, ADMIN = "score", "feedback", "read", "admin"
SCOPES: tuple[str, ...] = (SCORE, FEEDBACK, READ, ADMIN)

ANY_KEY = "*"
"""The requirement of a route outside `SCOPE_TABLE`: any valid key, whatever its scopes."""

SCOPE_TABLE: tuple[tuple[str, str], ...] = (
    # (route rule, scope it needs); a rule ending in "/" covers every rule under it
    ("/score", SCORE),
    ("/feedback", FEEDBACK),
    ("/decisions/", READ),
    ("/models", READ),
    ("/admin/", ADMIN),
    ("/admin", ADMIN),
)

OPEN_ENDPOINTS: dict[str, str] = {
    # name in the OPEN_ENDPOINTS setting -> route rule; open means no key is asked for
    "health": "/health",
    "ready": "/ready",
    "metrics": "/metrics",
    "openapi": "/openapi.json",
    "docs": "/docs",
}

MIN_KEY_CHARS = 32
MAX_KEY_CHARS = 512
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "rsk_"
"""Generated keys start with this, so secret scanners and people recognise a leaked one."""


class KeyConfigError(ValueError):
    """The configured keys cannot be used; the message names the setting, file or entry."""


@dataclass(frozen=True)
class ApiKey:
    """One key as held in memory: its id, the SHA-256 digest of the key and its scopes."""

    id: str
    digest: bytes
    scopes: frozenset[str]


def key_digest(key: str) -> bytes:
    """SHA-256 of a key's UTF-8 bytes: what the keys file stores (in hex) and lookups compare."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def fingerprint(presented: str) -> str:
    """What a log may say about a presented key: the first 12 hex digits of its SHA-256.

    The same prefix as the key's ``sha256`` in the keys file, so an operator can tell which
    (perhaps revoked) key a client still sends; 48 bits of a hash reveal nothing of a key.
    """
    return key_digest(presented).hex()[:12]


class KeyRing:
    """The configured keys, hashed; `authenticate` finds the key a client presents."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        ids: set[str] = set()
        digests: set[bytes] = set()
        for key in keys:
            if key.id in ids:
                raise KeyConfigError(f"API key id {key.id!r} is configured twice")
            if key.digest in digests:
                raise KeyConfigError(f"API key {key.id!r}: the same key is configured twice")
            ids.add(key.id)
            digests.add(key.digest)
        self.keys: tuple[ApiKey, ...] = tuple(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The entry whose key is `presented`, or None; constant time over the entries."""
        digest = key_digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: every entry is compared, match or not
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def parse_env_keys(value: Any) -> list[ApiKey]:
    """``API_KEYS``: ``"KEY,KEY:score+read"`` (or a JSON list of such items) → hashed entries."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    keys = []
    for n, item in enumerate((str(i).strip() for i in items), start=1):
        if not item:
            continue
        key, sep, scope_text = item.partition(":")
        where = f"RISK_API_KEYS item {n}"
        if not (MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS and _B64TOKEN.fullmatch(key)):
            raise KeyConfigError(
                f"{where}: a key must be {MIN_KEY_CHARS}-{MAX_KEY_CHARS} characters of "
                "letters, digits and -._~+/ (use `risk keys create`)"
            )
        scopes = _scopes(scope_text.split("+"), where) if sep else frozenset(SCOPES)
        keys.append(ApiKey(f"env-{n}", key_digest(key), scopes))
    return keys


def load_keys_file(path: str | Path) -> list[ApiKey]:
    """Entries ``{id, sha256, scopes}`` from a TOML (``.toml``) or JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyConfigError(f"RISK_API_KEYS_FILE {path}: {exc.strerror or exc}") from None
    data = _parse_keys_text(text, path)
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise KeyConfigError(f"RISK_API_KEYS_FILE {path}: expected a list of keys under 'keys'")
    keys = []
    for n, entry in enumerate(entries, start=1):
        where = f"RISK_API_KEYS_FILE {path}: entry {n}"
        if not isinstance(entry, dict):
            raise KeyConfigError(f"{where}: not a table/object")
        unknown = set(entry) - {"id", "sha256", "scopes"}
        if unknown:
            raise KeyConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key_id, digest, scopes = entry.get("id"), entry.get("sha256"), entry.get("scopes")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise KeyConfigError(f"{where}: id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
            raise KeyConfigError(f"{where} ({key_id}): sha256 must be 64 hex digits")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise KeyConfigError(f"{where} ({key_id}): scopes must be a list of strings")
        keys.append(ApiKey(key_id, bytes.fromhex(digest), _scopes(scopes, f"{where} ({key_id})")))
    return keys


def _parse_keys_text(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    kinds = ["toml"] if suffix == ".toml" else ["json"] if suffix == ".json" else ["toml", "json"]
    problems = []
    for kind in kinds:
        try:
            return tomllib.loads(text) if kind == "toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{kind.upper()}: {exc}")
    raise KeyConfigError(f"RISK_API_KEYS_FILE {path}: not valid {' nor '.join(problems)}")


def load_keys(config: Mapping[str, Any]) -> KeyRing:
    """The key ring from ``API_KEYS`` and ``API_KEYS_FILE`` (empty when neither is set)."""
    keys = parse_env_keys(config.get("API_KEYS"))
    if config.get("API_KEYS_FILE"):
        keys += load_keys_file(config["API_KEYS_FILE"])
    return KeyRing(keys)


def _scopes(names: Iterable[str], where: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in names)
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise KeyConfigError(
            f"{where}: unknown scope(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {', '.join(SCOPES)}"
        )
    return scopes


# -- making keys (`risk keys create`) ------------------------------------------------------
def new_key() -> str:
    """A fresh key: ``rsk_`` and 32 random bytes, URL-safe base64 (47 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(key_id: str, key: str, scopes: Iterable[str]) -> dict[str, Any]:
    """The keys-file entry of `key` (its hash, never the key); validates id and scopes."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyConfigError(f"--id {key_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
    chosen = _scopes(scopes, "--scopes")
    return {
        "id": key_id,
        "sha256": key_digest(key).hex(),
        "scopes": [s for s in SCOPES if s in chosen],
    }


def entry_toml(entry: Mapping[str, Any]) -> str:
    """A keys-file entry as a TOML ``[[keys]]`` table."""
    scopes = ", ".join(f'"{s}"' for s in entry["scopes"])
    return f'[[keys]]\nid = "{entry["id"]}"\nsha256 = "{entry["sha256"]}"\nscopes = [{scopes}]\n'


# -- which route needs what ----------------------------------------------------------------
def requirement(rule: str | None, open_endpoints: Iterable[str]) -> str | None:
    """What a route rule needs: None (open), a scope from `SCOPES`, or `ANY_KEY`.

    `rule` is the matched route's rule (``/decisions/<event_id>``), None when nothing matched
    (a 404 or 405 needs a key too, so that routes are not revealed to anonymous callers).
    """
    if rule is not None:
        for name in open_endpoints:
            if OPEN_ENDPOINTS.get(name) == rule:
                return None
        for pattern, scope in SCOPE_TABLE:
            if rule == pattern or (pattern.endswith("/") and rule.startswith(pattern)):
                return scope
    return ANY_KEY


def parse_open_endpoints(value: Any) -> frozenset[str]:
    """``OPEN_ENDPOINTS``: a list, or a comma-separated string, of names in `OPEN_ENDPOINTS`."""
    names = value.split(",") if isinstance(value, str) else list(value or ())
    chosen = frozenset(str(n).strip() for n in names if str(n).strip())
    unknown = chosen - set(OPEN_ENDPOINTS)
    if unknown:
        raise KeyConfigError(
            f"RISK_OPEN_ENDPOINTS: unknown endpoint(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(OPEN_ENDPOINTS)}"
        )
    return chosen


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not 0 < len(token) <= MAX_KEY_CHARS:
        return None
    return token if _B64TOKEN.fullmatch(token) else None


# -- loopback --------------------------------------------------------------------------------
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """A bind address (``--host``) that only this machine can reach: 127.0.0.0/8, ::1,
    localhost."""
    host = host.strip()
    if host.lower() in _LOOPBACK_NAMES:
        return True
    return _is_loopback_ip(host.removeprefix("[").removesuffix("]"))


def is_loopback_client(remote_addr: str | None) -> bool:
    """A client address on this machine. No address at all (a Unix socket) counts as local."""
    if not remote_addr:
        return True
    return remote_addr in ("127.0.0.1", "::1") or _is_loopback_ip(remote_addr)


def _is_loopback_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# -- failed attempts -------------------------------------------------------------------------
class FailureLimiter:
    """Counts authentication failures per client address; too many in a window blocks it.

    After `limit` failures within `window` seconds (counted from the first), the address is
    blocked for `block` seconds (`risk_service.web` then answers its requests 429). At most
    `max_clients` addresses are tracked; the least recently failing ones are forgotten first.
    `limit` 0 disables it. Cheap: `blocked_for` is one dict lookup, without a lock.

    Behind a load balancer, NAT or Docker's port proxy many clients share one address, which
    is why, by default, a blocked address is refused only requests without a valid key
    (``AUTH_BLOCK_VALID_KEYS`` refuses its valid keys too), and why ``TRUSTED_PROXIES`` takes
    the client address from X-Forwarded-For.
    """

    def __init__(self, limit: int, window: float, block: float, max_clients: int = 10_000) -> None:
        self.limit = int(limit)
        self.window = float(window)
        self.block = float(block)
        self.max_clients = int(max_clients)
        # address -> [window start, failures in the window, blocked until]
        self._clients: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked_for(self, address: str, now: float | None = None) -> float:
        """Seconds until `address` may try again; 0 when it is not blocked (one dict lookup)."""
        state = self._clients.get(address)
        if state is None or not state[2]:
            return 0.0
        left = state[2] - (time.monotonic() if now is None else now)
        return left if left > 0 else 0.0

    def failure(self, address: str, now: float | None = None) -> bool:
        """Record one failure; True when it makes `address` blocked (from now on)."""
        if self.limit <= 0:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            state = self._clients.get(address)
            if state is None or now - state[0] > self.window or (state[2] and now >= state[2]):
                state = [now, 0.0, 0.0]
                self._clients[address] = state
            self._clients.move_to_end(address)
            state[1] += 1
            newly = not state[2] and state[1] >= self.limit
            if newly:
                state[2] = now + self.block
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return newly

    def __len__(self) -> int:
        return len(self._clients)
