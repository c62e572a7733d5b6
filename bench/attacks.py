"""Attack cases against the production configuration: what the service does with hostile input.

Starts a private Redis and a private PostgreSQL (bench/cluster.py) and `risk serve --workers 2`
on them with API keys, then:

- **bodies**: oversized bodies (just over MAX_BODY_BYTES, 1 MiB, 16 MiB; with a
  Content-Length and chunked) and deeply nested ones (depth 9, 200, 5,000, and 30,000
  within the size limit), 20 times each: each must get a 413 or a 400 naming the problem,
  never a 5xx, and the workers' memory must stay put (RSS growth under 20 MB);
- **slow clients** (slowloris): many connections that each send their request a byte a
  second (half dribble their headers, half a declared body), while an ordinary client
  scores 20 payments a second: how many of the ordinary requests are answered, how fast,
  and what gunicorn does with the slow connections;
- **keys guessed by brute force**: 200 requests with random well-formed keys, each on a new
  connection (either worker may take it): 401 until AUTH_FAILURE_LIMIT failures per worker,
  then 429; a valid key from the same address is still served; every failure logged with a
  fingerprint of the key, never the key;
- **injection in string fields**: SQL, JSON, log-injection strings, control characters and
  unicode in event_id and in every identifier field: 200 or a 400 naming the field, never a
  5xx; afterwards the decisions table is intact, every 200 answer is in it under its exact
  event_id, every log line is still one JSON object (or gunicorn's own line), and no
  identifier appears in the clear in the logs, the decision log or Redis keys;
- **identifiers crafted to collide with hashed ones**: an account_id equal to the keyed
  hash (HMAC hex) of a victim's account id, one equal to the victim's Redis state key, ids
  with ':' shaped like Redis keys: the victim's velocity must not move.

Usage: python bench/attacks.py [--quick] (--quick: fewer slow connections, 15 s of them).
Prints a summary, rewrites the "attacks" section of docs/reliability.md (unless --no-doc)
and exits non-zero if a goal fails.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import cluster

RNG = random.Random(7)


class Outcome:
    """One attack: what was sent, what came back, and whether its goals hold."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[tuple[str, str, str]] = []  # what was sent, what happened, verdict
        self.goals: dict[str, bool] = {}
        self.notes: list[str] = []

    def row(self, sent: str, happened: str, ok: bool | None = None) -> None:
        self.rows.append((sent, happened, "" if ok is None else cluster.verdict(ok)))

    def goal(self, name: str, ok: bool) -> None:
        self.goals[name] = ok
        print(f"  {name}: {'pass' if ok else 'FAIL'}", flush=True)


# -- raw HTTP ------------------------------------------------------------------------------------
def raw_exchange(port: int, head: bytes, body_parts: list[bytes], timeout: float = 20.0) -> str:
    """Send a request over a fresh socket (the body from another thread, so an early answer is
    read even while the body is still going out); the status line and the JSON error, or the
    socket error."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent_error: list[str] = []

    def send() -> None:
        try:
            sock.sendall(head)
            for part in body_parts:
                sock.sendall(part)
        except OSError as exc:
            sent_error.append(type(exc).__name__)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"
    finally:
        sock.close()
        sender.join(timeout=5)
    if not data:
        return "connection closed without an answer"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace").removeprefix("HTTP/1.1 ")
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    try:
        error = json.loads(body)
        return f"{status}: {error.get('error')} ({error.get('message')})"
    except ValueError:
        return f"{status}: {body[:80]!r}"


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def head(length: int | None, key: str = cluster.SCORE_KEY) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\n{framing}\r\nConnection: close\r\n\r\n"
    ).encode()


def chunked(body: bytes, size: int = 65536) -> list[bytes]:
    parts = [b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n" for i in
             range(0, len(body), size)]  # fmt: skip
    return [*parts, b"0\r\n\r\n"]


# -- 1. bodies -----------------------------------------------------------------------------------
def bodies(service: cluster.Service, quick: bool) -> Outcome:
    out = Outcome("oversized and deeply nested bodies")
    print(f"\n== {out.name}", flush=True)
    limit = 64 * 1024
    big = {
        "just over the limit (64 KiB + 1)": b'{"x":"' + b"a" * (limit - 7) + b'"}',
        "1 MiB": b'{"x":"' + b"a" * 2**20 + b'"}',
        "16 MiB": b'{"x":"' + b"a" * 2**24 + b'"}',
    }
    nested = {
        "depth 9 (limit 8)": b'{"account":' + b'{"a":' * 8 + b"1" + b"}" * 8 + b"}",
        "depth 200": b'{"account":' + b"[" * 200 + b"]" * 200 + b"}",
        "depth 5,000": b'{"account":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "depth 30,000 (60 KB)": b'{"account":' + b"[" * 30000 + b"]" * 30000 + b"}",
        "6,000 keys in one object": b"{" + b",".join(b'"k%d":1' % i for i in range(6000)) + b"}",
    }
    repeat = 5 if quick else 20
    rss_before = service.rss_kb()
    all_ok = True
    for name, body in {**big, **nested}.items():
        for framing in ("Content-Length", "chunked"):
            answers: Counter[str] = Counter()
            for _ in range(repeat):
                parts = chunked(body) if framing == "chunked" else [body]
                length = None if framing == "chunked" else len(body)
                answers[raw_exchange(service.port, head(length), parts)] += 1
            expected = "413" if name in big else "400"
            ok = all(a.startswith(expected) for a in answers)
            if name in big and not ok:  # a refused oversized body may close the connection
                ok = all(a.startswith("413") or "closed" in a for a in answers)
            all_ok = all_ok and ok and not any(a.startswith("5") for a in answers)
            happened = "; ".join(f"{n}× {a}" for a, n in answers.most_common())
            out.row(f"{name}, {framing} ×{repeat}", happened, ok)
    time.sleep(1.0)
    rss_after = service.rss_kb()
    growth = {p: (rss_after.get(p, 0) - kb) / 1024 for p, kb in rss_before.items()}
    out.row(
        "worker RSS before → after",
        ", ".join(
            f"{rss_before[p] / 1024:.0f} → {rss_after.get(p, 0) / 1024:.0f} MB" for p in rss_before
        ),
        max(growth.values()) < 20 and set(rss_after) == set(rss_before),
    )
    out.goal("413 or 400 naming the problem, never 5xx", all_ok)
    out.goal(
        "memory stable (each worker < 20 MB more, none restarted)",
        max(growth.values()) < 20 and set(rss_after) == set(rss_before),
    )
    return out


# -- 2. slow clients -----------------------------------------------------------------------------
def slow_clients(service: cluster.Service, work: Any, quick: bool) -> Outcome:
    out = Outcome("slow clients (slowloris)")
    n_slow = 32 if quick else 64
    seconds = 15.0 if quick else 30.0
    before_s = after_s = 5.0
    print(f"\n== {out.name}: {n_slow} connections, a byte a second for {seconds:.0f} s", flush=True)
    spec = cluster.LoadSpec(
        url=service.url,
        run=cluster.new_run_id("slowloris"),
        accounts=200,
        threads=8,
        rate=20,
        seconds=before_s + seconds + after_s,
        timeouts=(5.0,),
        max_attempts=1,
    )
    load = cluster.LoadProcess(spec, work)
    time.sleep(before_s)
    t_slow = time.time()
    conns: list[dict[str, Any]] = []
    for i in range(n_slow):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
        sock.setblocking(False)
        if i % 2 == 0:  # headers, one byte at a time, never finished
            first = b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            drip = b"X-Slow: " + b"a" * 10_000
        else:  # complete headers announcing a body, then the body a byte a second
            first = head(4096)
            drip = b'{"event_id":"' + b"a" * 5000
        conns.append({"sock": sock, "drip": drip, "sent": 0, "closed": None, "answer": b""})
        _send(conns[-1], first)
    while time.time() - t_slow < seconds:
        tick = time.time()
        for c in conns:
            if c["closed"] is None:
                _poll(c, t_slow)
                if c["closed"] is None:
                    _send(c, c["drip"][c["sent"] : c["sent"] + 1], advance=True)
        time.sleep(max(0.0, 1.0 - (time.time() - tick)))
    t_end = time.time()
    for c in conns:
        if c["closed"] is None:
            _poll(c, t_slow)
        c["sock"].close()
    attempts = load.wait(timeout=before_s + seconds + after_s + 60)
    windows = {
        "before": [a for a in attempts if a.t0 < t_slow],
        "during": [a for a in attempts if t_slow <= a.t0 < t_end],
        "after": [a for a in attempts if a.t0 >= t_end],
    }
    for name, seen in windows.items():
        answered = [a for a in seen if a.status == 200]
        lat = cluster.percentiles([1000 * (a.t1 - a.t0) for a in answered])
        counts = Counter(a.outcome for a in seen)
        text = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
        if answered:
            text += f"; latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms"
        out.row(f"ordinary client, 20 payments/s, {name} the slow connections", text)
        print(f"  {name}: {text}", flush=True)
    closed = [c for c in conns if c["closed"] is not None]
    answers = Counter(c["answer"].split(b"\r\n", 1)[0].decode(errors="replace") or "none"
                      for c in closed)  # fmt: skip
    when = sorted(c["closed"] for c in closed)
    happened = f"{len(closed)} of {n_slow} closed by the server within {seconds:.0f} s" + (
        f" (after {when[0]:.0f}-{when[-1]:.0f} s; answers: {dict(answers)})" if when else ""
    )
    out.row(f"{n_slow} slow connections, a byte a second", happened)
    print(f"  {happened}", flush=True)
    during = windows["during"]
    served = sum(a.status == 200 for a in during)
    ok = bool(during) and served / len(during) >= 0.99
    out.goal("the service keeps answering others (≥ 99% of their requests)", ok)
    recovered = all(a.status == 200 for a in windows["after"][-20:]) and bool(windows["after"])
    out.goal("it answers normally once the slow clients are gone", recovered)
    return out


def _send(c: dict[str, Any], data: bytes, advance: bool = False) -> None:
    try:
        c["sock"].send(data)
        if advance:
            c["sent"] += len(data)
    except BlockingIOError:
        pass
    except OSError:
        c["closed"] = c.get("closed") or -1.0


def _poll(c: dict[str, Any], t0: float) -> None:
    try:
        data = c["sock"].recv(4096)
    except BlockingIOError:
        return
    except OSError:
        c["closed"] = time.time() - t0
        return
    c["answer"] += data  # an answer (the server gave up on it) or the end of the connection
    c["closed"] = time.time() - t0


# -- 3. brute force ------------------------------------------------------------------------------
def brute_force(service: cluster.Service, quick: bool) -> Outcome:
    from risk_service.auth import fingerprint

    out = Outcome("keys guessed by brute force")
    tries = 100 if quick else 200
    print(f"\n== {out.name}: {tries} guesses", flush=True)
    keys = ["rsk_" + secrets.token_urlsafe(32) for _ in range(tries)]
    body = json.dumps(cluster.payment("brute-1", "acct-brute", RNG, 5)).encode()
    statuses: Counter[int] = Counter()
    for key in keys:
        client = cluster.Http(service.url)  # a new connection: either worker may take it
        status, _ = client.request(
            "POST", "/score", body, {**cluster.score_headers(key), "Connection": "close"}
        )
        client.close()
        statuses[status] += 1
    valid = cluster.Http(service.url)
    body_ok = json.dumps(cluster.payment("brute-valid", "acct-brute", RNG, 5)).encode()
    valid_status, _ = valid.request("POST", "/score", body_ok, cluster.score_headers())
    valid.close()
    lines = service.log_lines()
    failures = [json.loads(x) for x in lines if '"message":"authentication failed"' in x]
    blocked = [x for x in lines if "client blocked after repeated" in x]
    fingerprints = {fingerprint(k) for k in keys}
    logged_fp = {f.get("key_fingerprint") for f in failures}
    leaked = [k for k in keys if any(k in x for x in lines)]
    out.row(
        f"{tries} random well-formed keys, one connection each",
        f"{statuses[401]} × 401, {statuses[429]} × 429"
        + "".join(f", {n} × {s}" for s, n in statuses.items() if s not in (401, 429)),
    )
    out.row("then a valid key from the same address", str(valid_status), valid_status == 200)
    out.row(
        "the service's log",
        f"{len(failures)} 'authentication failed' lines, each with a key_fingerprint"
        f" ({len(logged_fp & fingerprints)} distinct, all of sent keys: "
        f"{logged_fp <= fingerprints}); {len(blocked)} 'client blocked' line(s); "
        f"keys in the clear: {len(leaked)}",
    )
    limit = 20 * service.workers
    out.goal(
        "rate-limited: at most AUTH_FAILURE_LIMIT (20) 401s per worker, then 429",
        statuses[401] <= limit and statuses[429] >= tries - limit and statuses[200] == 0,
    )
    out.goal("a valid key is still served", valid_status == 200)
    out.goal(
        "failures logged with a fingerprint, never the key",
        bool(failures) and logged_fp <= fingerprints and not leaked and bool(blocked),
    )
    return out


# -- 4. injection --------------------------------------------------------------------------------
INJECTIONS = [
    "'; DROP TABLE decisions;--",
    '" OR 1=1 --',
    "1); DELETE FROM decisions WHERE (1=1",
    "$$; DROP TABLE labels; $$",
    '{"decision":"approve"}',
    '"},"decision":"approve","x":{"',
    'a\\"b\\\\c',
    'x\n{"level":"ERROR","message":"forged line"}',
    "x\r\n[2026-01-01 00:00:00 +0000] [1] [ERROR] forged gunicorn line",
    "\u001b[31mred\u001b[0m",
    "tab\tand\u007fdel\u0007bell",
    "nul\u0000byte",
    "line\u2028separator",
    "rtl\u202eoverride",
    "zero\u200bwidth",
    "账户-🙂-ñ-é",
    "%s%s%n{0}${jndi:ldap://127.0.0.1/x}",
    "../../etc/passwd",
    "a" * 128,
    "a" * 129,
]
FIELDS = ["event_id", "account_id", "merchant_id", "device_id", "instrument_id", "ip_address"]
PERSONAL = FIELDS[1:]


def tagged(text: str, field: str) -> str:
    """The string as sent in `field`: event ids as they are (kept as sent, by design), other
    identifiers prefixed with their field, so that finding one in a log line or a Redis key
    means that identifier leaked, not the event id that carried the same text."""
    if field == "event_id":
        return text
    value = f"{field}={text}"
    return value[: len(text)] if len(text) >= 128 else value


def injection(
    service: cluster.Service, stores: cluster.PrivateStores, run: str
) -> tuple[Outcome, list[str]]:
    out = Outcome("injection in string fields")
    print(f"\n== {out.name}", flush=True)
    client = cluster.Http(service.url)
    results: list[tuple[str, str, int, dict[str, Any]]] = []
    accepted: list[str] = []
    for n, text in enumerate(INJECTIONS):
        for field in FIELDS:
            value = tagged(text, field)
            event_id = value if field == "event_id" else f"{run}-inj-{n}-{field}"
            event = cluster.payment(event_id, f"{run}-inj-acct", RNG, 5)
            event[field] = value
            if field == "account_id":
                event.pop("account")
            status, data = client.request(
                "POST", "/score", json.dumps(event).encode(), cluster.score_headers(), 30
            )
            answer = json.loads(data) if data else {}
            results.append((value, field, status, answer))
            if status == 200:
                accepted.append(event_id)
    client.close()
    statuses = Counter(s for _, _, s, _ in results)
    misnamed = [
        (t, f, s, a.get("field"))
        for t, f, s, a in results
        if 400 <= s < 500 and a.get("field") != f
    ]
    five = [(t, f, s) for t, f, s, _ in results if s >= 500]
    refused = sorted({(repr(t)[:40], f, a.get("error")) for t, f, s, a in results if s == 400})
    out.row(
        f"{len(INJECTIONS)} strings × {len(FIELDS)} fields ({len(results)} payments)",
        ", ".join(f"{n} × {s}" for s, n in sorted(statuses.items()))
        + (f"; 400s: {', '.join(f'{t} in {f} ({e})' for t, f, e in refused)}" if refused else ""),
        not five and not misnamed,
    )
    out.goal("200 or a 4xx naming the field, never 5xx", not five and not misnamed)

    time.sleep(2.0)  # let group commits, the spool and its flusher run
    db = cluster.DecisionLogDb(stores.pg.url)
    try:
        intact = db.conn.execute("SELECT to_regclass('decisions') IS NOT NULL").fetchone()
        total = db.count()
        found, absent = [], []
        for event_id in accepted:
            try:
                row = db.conn.execute(
                    "SELECT event_id FROM decisions WHERE event_id = %s", (event_id,)
                ).fetchone()
            except Exception as exc:  # a string PostgreSQL cannot even compare
                db.reconnect()
                absent.append(f"{event_id!r} ({type(exc).__name__})")
                continue
            (found if row and row[0] == event_id else absent).append(repr(event_id)[:60])
        dump = db.conn.execute("SELECT d::text FROM decisions d").fetchall()
    finally:
        db.close()
    in_clear = [
        (t, f) for t, f, s, _ in results if f in PERSONAL and s == 200 and len(t) > 3
        and any(json.dumps(t)[1:-1] in row[0] or t in row[0] for row in dump)
    ]  # fmt: skip
    ready = service.ready_samples(8)
    spool_errors = {
        s["details"]["decision_log"].get("last_error") for s in ready if
        s["details"]["decision_log"].get("spooled")
    }  # fmt: skip
    spooled = cluster.spooled_on_disk(service)
    out.row(
        "the decisions table afterwards",
        f"exists: {bool(intact and intact[0])}; {total} rows; accepted payments found under "
        f"their exact event_id: {len(found)} of {len(accepted)}"
        + (f"; not in PostgreSQL: {', '.join(absent)}" if absent else "")
        + (f"; {spooled} decision(s) stuck in the spool ({', '.join(map(str, spool_errors))})"
           if spooled else ""),
        bool(intact and intact[0]) and not absent,
    )  # fmt: skip
    out.row(
        "identifiers in the clear in the decision log",
        str(len(in_clear)) + (f": {in_clear[:3]}" if in_clear else ""),
        not in_clear,
    )
    out.goal("the decisions table intact", bool(intact and intact[0]) and total >= len(found))
    out.goal("every accepted payment in PostgreSQL under its exact event_id", not absent)
    out.goal("no identifier in the clear in the decision log", not in_clear)
    return out, [t for t, f, s, _ in results if f in PERSONAL]


def check_logs(
    service: cluster.Service, stores: cluster.PrivateStores, secrets_: list[str]
) -> Outcome:
    """Every line of the service's log: one JSON object (or gunicorn's own line); no personal
    identifier sent in this run, raw or JSON-escaped, in any line or Redis key."""
    import re

    import redis

    out = Outcome("logs and Redis after the attacks")
    print(f"\n== {out.name}", flush=True)
    gunicorn_line = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")
    lines = service.log_lines()
    bad = []
    values: list[str] = []
    for line in lines:
        if line.startswith("{"):
            try:
                values.append(json.dumps(json.loads(line), ensure_ascii=False))
            except ValueError:
                bad.append(line)
        elif not gunicorn_line.match(line):
            bad.append(line)
    needles = {t for t in secrets_ if len(t) > 3}
    leaks = sorted({repr(t)[:40] for t in needles for v in [*values, *lines] if t in v})
    client = redis.Redis.from_url(stores.redis.url)
    keys = [k.decode("utf-8", "replace") for k in client.scan_iter(count=1000)]
    client.close()
    in_keys = sorted({repr(t)[:40] for t in needles for k in keys if t in k})
    out.row(
        f"{len(lines)} log lines",
        f"{len(lines) - len(bad)} are one JSON object or gunicorn's own line; "
        f"{len(bad)} are neither" + (f" (first: {bad[0][:120]!r})" if bad else ""),
        not bad,
    )
    out.row(
        "personal identifiers sent (SQL, JSON, control characters, …) found in the log",
        str(len(leaks)) + (f": {', '.join(leaks[:5])}" if leaks else ""),
        not leaks,
    )
    out.row(
        f"the same in the {len(keys)} Redis keys",
        str(len(in_keys)) + (f": {', '.join(in_keys[:5])}" if in_keys else ""),
        not in_keys,
    )
    out.goal("every log line still valid JSON (or gunicorn's)", not bad)
    out.goal("no raw identifier in logs or Redis keys", not leaks and not in_keys)
    return out


# -- 5. collisions -------------------------------------------------------------------------------
def collisions(service: cluster.Service, stores: cluster.PrivateStores, run: str) -> Outcome:
    from risk_service.decision_records import Pseudonymiser
    from risk_service.features.spec import FEATURE_SET_VERSION

    out = Outcome("identifiers crafted to collide with hashed ones")
    print(f"\n== {out.name}", flush=True)
    victim = f"{run}-victim"
    hashed = Pseudonymiser(cluster.HASH_KEY.encode())(victim)
    state_key = f"risk:{FEATURE_SET_VERSION}:account:{hashed}"
    crafted = {
        "the victim's keyed hash (HMAC hex)": hashed,
        "the victim's Redis state key": state_key,
        "a ':'-path to the victim's key": f"{FEATURE_SET_VERSION}:account:{hashed}",
        "the victim's id + ':profile'": f"{victim}:profile",
        "the victim's id with a trailing space": f"{victim} ",
        "the victim's id in capitals": victim.upper(),
    }
    client = cluster.Http(service.url)

    def score(event_id: str, account: str, **fields: Any) -> dict[str, Any]:
        event = {**cluster.payment(event_id, account, RNG, 5), **fields}
        status, data = client.request(
            "POST", "/score", json.dumps(event).encode(), cluster.score_headers(), 30
        )
        return {"status": status, **(json.loads(data) if data else {})}

    victim_events = 5
    for i in range(victim_events):
        score(f"{run}-victim-{i}", victim)
    statuses: Counter[int] = Counter()
    for n, account in enumerate(crafted.values()):
        for i in range(3):  # also as device, instrument, ip: the same hashes
            answer = score(
                f"{run}-crafted-{n}-{i}",
                account,
                device_id=account,
                instrument_id=account,
                ip_address=account,
            )
            statuses[answer["status"]] += 1
    deadline = time.monotonic() + 30  # degraded ones (if any) applied to Redis first
    while cluster.backlog(service) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    probe = score(f"{run}-victim-final", victim)
    client.close()
    db = cluster.DecisionLogDb(stores.pg.url)
    try:
        row = None
        deadline = time.monotonic() + 30
        while row is None and time.monotonic() < deadline:
            row = db.rows([f"{run}-victim-final"]).get(f"{run}-victim-final")
            time.sleep(0.1 if row is None else 0)
        counted = int(float(row[2])) if row and row[2] is not None else -1
        crafted_hashes = db.conn.execute(
            "SELECT DISTINCT account_hash FROM decisions WHERE event_id LIKE %s",
            (f"{run}-crafted-%",),
        ).fetchall()
    finally:
        db.close()
    shared = [h for (h,) in crafted_hashes if h == hashed]
    out.row(
        f"{victim_events} payments of a victim account",
        "then 3 payments for each crafted id (as account, device, instrument and ip)",
    )
    out.row(
        ", ".join(crafted),
        ", ".join(f"{n} × {s}" for s, n in statuses.items()),
        set(statuses) <= {200, 400},
    )
    out.row(
        "the victim's next payment: account_events_24h",
        f"{counted} (expected {victim_events}; degraded: {probe.get('degraded')})",
        counted == victim_events,
    )
    out.row(
        "crafted accounts whose logged hash equals the victim's",
        f"{len(shared)} of {len(crafted_hashes)}",
        not shared,
    )
    out.goal("crafted ids share no state with the victim", counted == victim_events and not shared)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter slow clients")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/reliability.md")
    args = parser.parse_args()
    command = cluster.script_command("bench/attacks.py")
    cluster.exit_on_signals()
    started_at = datetime.now(UTC)
    before = cluster.other_load()
    t_start = time.time()
    run = cluster.new_run_id("attack")
    outcomes: list[Outcome] = []
    with (
        cluster.tmpdir("risk-attacks-") as work,
        cluster.PrivateStores() as stores,
        cluster.Service(
            work / "service",
            cluster.production_env(state_url=stores.state_url, pg_url=stores.pg.url),
        ) as service,
    ):
        outcomes.append(bodies(service, args.quick))
        outcomes.append(slow_clients(service, work, args.quick))
        inj, sent_ids = injection(service, stores, run)
        outcomes.append(inj)
        outcomes.append(collisions(service, stores, run))
        outcomes.append(brute_force(service, args.quick))  # last: it blocks 127.0.0.1 a while
        outcomes.append(check_logs(service, stores, sent_ids))
    ok = all(all(o.goals.values()) for o in outcomes)
    text = render(outcomes, command, started_at, time.time() - t_start, before)
    print()
    print(text)
    if not args.no_doc:
        cluster.write_section("attacks", text)
    return 0 if ok else 1


def render(
    outcomes: list[Outcome], command: list[str], started: datetime, seconds: float, before: str
) -> str:
    lines = ["## Attack cases", "", cluster.header(command, started, seconds, before)]
    for o in outcomes:
        lines += ["", f"### {o.name[0].upper()}{o.name[1:]}", ""]
        lines.append(cluster.table(["sent", "what happened", ""], [_cell(r) for r in o.rows]))
        lines += [
            "",
            "Goals: " + "; ".join(f"{g}: {cluster.verdict(v)}" for g, v in o.goals.items()),
        ]
        lines += [f"- {n}" for n in o.notes]
    return "\n".join(lines)


def _cell(row: tuple[str, str, str]) -> tuple[str, ...]:
    return tuple(c.replace("|", "\\|").replace("\n", "\\n") for c in row)


if __name__ == "__main__":
    sys.exit(main())
