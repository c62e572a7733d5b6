"""Redis commands of the request path on redis-py connections, without its command layer.

redis-py's client runs every command through its connection pool, retry wrapper,
argument checks and observability hooks: about 135 µs of CPU for one MGET of eight
keys here, against about 60 µs for packing, sending and parsing the same command on
a connection directly (`docs/benchmarks.md`, "Redis without redis-py's command
layer"). A /score on Redis makes two such calls (the transaction's read and its
commit), so the request path sends them itself, on connections of its own made from
the client's pool settings (address, timeouts, database, credentials).

The semantics stay redis-py's: its connection connects on first use, drops the
socket on any failure (a timeout or a reset: the next call connects anew, so a
half-read reply can never be taken for the next one's), and raises its own errors,
which `RedisState._call` counts for the circuit breaker as before. A script unknown
to the server (a restarted or flushed Redis) is loaded and the call repeated, as
redis-py's `Script` does.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from typing import Any

import redis
from redis.exceptions import NoScriptError


class Connections:
    """redis-py connections for the request path, made like the client pool's own: a call
    takes an idle one (or makes one) and puts it back, so there are as many as calls ever
    ran at once, whatever threads come and go (the Flask development server makes one per
    request)."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: deque[Any] = deque()  # pop and append are atomic: no lock
        self._closed = False

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply (raw: bytes, lists, None)."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
        if conn.pid != os.getpid():  # made before a fork: the parent's socket, not ours
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            conn.send_packed_command(conn.pack_command(*args), check_health=False)
            return conn.read_response()
        finally:  # a failed call has dropped its socket already: it connects anew next time
            if self._closed:
                conn.disconnect()
            else:
                self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections, and any in use once its call ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().disconnect()


class LeanScript:
    """A Lua script run by EVALSHA on the request path's connections, loaded when the server
    lacks it."""

    def __init__(self, connections: Connections, source: str) -> None:
        self._connections = connections
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._connections.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self._connections.call("SCRIPT", "LOAD", self._source)
            return self._connections.call("EVALSHA", self.sha, len(keys), *keys, *args)
