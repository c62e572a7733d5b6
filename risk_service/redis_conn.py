"""Redis commands of the request path on a connection of the calling thread's own.

redis-py's client runs every command through its connection pool, retry wrapper,
argument checks and observability hooks: about 135 µs of CPU for one MGET of eight
keys here, against about 60 µs for packing, sending and parsing the same command on
a connection directly (`docs/benchmarks.md`, "Redis without redis-py's command
layer"). A /score on Redis makes two such calls (the transaction's read and its
commit), so the request path sends them itself, on one connection per thread, made
from the client's own pool settings (address, timeouts, database, credentials).

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
import threading
from typing import Any

import redis
from redis.exceptions import NoScriptError


class ThreadConnections:
    """One redis-py connection per thread (and process), made like the pool's own."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()
        self._made: list[redis.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.pid != os.getpid():  # a forked child makes its own
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
            self._local.conn = conn
            with self._lock:
                self._made.append(conn)
        return conn

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply (raw: bytes, lists, None)."""
        conn = self._connection()
        conn.send_packed_command(conn.pack_command(*args), check_health=False)
        return conn.read_response()

    def close(self) -> None:
        """Close every connection made so far (from any thread: at shutdown)."""
        with self._lock:
            made, self._made = self._made, []
        for conn in made:
            conn.disconnect()


class LeanScript:
    """A Lua script run by EVALSHA on a thread's connection, loaded when the server lacks it."""

    def __init__(self, connections: ThreadConnections, source: str) -> None:
        self._connections = connections
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._connections.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self._connections.call("SCRIPT", "LOAD", self._source)
            return self._connections.call("EVALSHA", self.sha, len(keys), *keys, *args)
