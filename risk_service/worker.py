"""The gunicorn worker of `risk serve`: gthread, but a thread only ever gets a whole request.

gunicorn's gthread worker hands a connection to a thread as soon as it is accepted (or, kept
alive, readable), and the thread reads the request with blocking calls: a client that sends a
byte a second holds a thread as long as it likes, and a few dozen such clients starve the
service (slowloris). `BufferingThreadWorker` reads each request in its event loop instead,
without blocking, and submits the connection to the thread pool once the head and the whole
body are in memory, as a buffering proxy (nginx) would. A client that has not sent a whole
request within ``RISK_CLIENT_TIMEOUT_SECONDS`` (default 5) of starting it, or a new connection
silent that long, is closed: with a 408 if it had sent part of a request.

Bodies are bounded by the application's ``MAX_CONTENT_LENGTH`` (1 MiB if it has none): a
larger Content-Length goes to the thread at once (the application answers 413 from the header,
and the connection closes rather than read the rest); a chunked body that grows past it (plus
room for the framing) gets a 413 from here. A head over 64 KiB gets a 431. A client that sends
``Expect: 100-continue`` gets its "100 Continue" from here too, then its body is read here.
Closing a connection ("lingering": FIN, then reading what the client still sends so it gets the
answer rather than a reset) also happens in the event loop: gthread does it in the loop with a
blocking read of up to 2 s.

With one thread, a whole request is answered in the loop itself (`serve_inline`), in a greenlet
that waits for the end of the loop's turn to commit its decision with the others of that turn
(`risk_service/turns.py`, ``RISK_TURN_COMMITS``); TreeSHAP reasons run on a helper thread
meanwhile, beside the loop (``RISK_REASONS_BESIDE``). With the in-memory state and a core to
spare, the scorer itself runs in a process the worker forks (`risk_service/scoring_process.py`,
``RISK_SCORING_PROCESS``): the loop keeps HTTP and validation, and hands each /score event over.

TLS, the PROXY protocol and HTTP/2 prior knowledge are not buffered (their bytes are not plain
HTTP/1.1 here): with any of them on, connections are handled as gthread handles them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import selectors
import socket
import time
from collections.abc import Mapping
from concurrent import futures
from typing import Any, NamedTuple

from gunicorn import sock as gunicorn_sock
from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from risk_service import http_response
from risk_service import scoring_process as scoring
from risk_service.http_framing import DEFAULT_BODY_LIMIT, HEAD_LIMIT, RequestReader, Status
from risk_service.turns import Turn

TIMEOUT_ENV = "RISK_CLIENT_TIMEOUT_SECONDS"
TURN_COMMITS_ENV = "RISK_TURN_COMMITS"
REASONS_BESIDE_ENV = "RISK_REASONS_BESIDE"
SCORING_PROCESS_ENV = "RISK_SCORING_PROCESS"
STALL_ENV = "RISK_SCORING_STALL_SECONDS"
DEFAULT_STALL_SECONDS = 30.0  # a pass takes milliseconds; an admin change, seconds at most
DEFAULT_TIMEOUT_SECONDS = 5.0
RECV_SIZE = 64 * 1024
READS_PER_EVENT = 4  # then back to the loop, so one fast sender does not hold it
LINGER_SECONDS = 2.0  # as gunicorn's util.close_graceful
LINGER_MAX_BYTES = 64 * 1024
LOG_EVERY_SECONDS = 10.0
# With one thread, requests are answered in the event loop, except these: an admin change
# verifies and loads a model bundle (0.1-0.6 s; seconds with a cold numba cache), which would
# hold every /score meanwhile.
POOL_PATHS = (b"/admin/",)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def turn_commits(environ: Mapping[str, str] = os.environ) -> bool:
    """``RISK_TURN_COMMITS`` (default on): with one thread, the decisions of one turn of the
    event loop commit together (`risk_service/turns.py`); off, each commits alone."""
    return _switch(TURN_COMMITS_ENV, environ)


def reasons_beside(
    environ: Mapping[str, str] = os.environ, *, workers: int = 1, cores: int | None = None
) -> bool:
    """``RISK_REASONS_BESIDE``: with turn commits, a request's TreeSHAP reasons run on a
    helper thread while the loop serves the others (`turns.beside`); off, in the loop. Unset:
    on where the workers leave a core for the helpers (fewer workers than usable cores), since
    on a machine the workers fill it only adds two hand-offs a flagged request."""
    if not environ.get(REASONS_BESIDE_ENV, "").strip():
        return workers < (cores if cores is not None else usable_cores())
    return _switch(REASONS_BESIDE_ENV, environ)


def scoring_process(
    environ: Mapping[str, str] = os.environ, *, workers: int = 1, cores: int | None = None
) -> bool:
    """``RISK_SCORING_PROCESS``: with turn commits and the in-memory state, the scorer runs in
    a process of its own beside the worker (`risk_service/scoring_process.py`); off, in the
    worker's loop. Unset: on where the workers leave a core for it. Never on Redis (each
    worker scores its own requests there)."""
    if environ.get("RISK_STATE_URL", "").strip():
        return False
    if not environ.get(SCORING_PROCESS_ENV, "").strip():
        return workers < (cores if cores is not None else usable_cores())
    return _switch(SCORING_PROCESS_ENV, environ)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, as Linux)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


def _switch(name: str, environ: Mapping[str, str]) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{name}={raw!r}: expected on or off (1 or 0)")


def client_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """``RISK_CLIENT_TIMEOUT_SECONDS``: seconds a client has to send one whole request."""
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS, environ)


def scoring_stall(environ: Mapping[str, str] = os.environ) -> float:
    """``RISK_SCORING_STALL_SECONDS``: how long a scoring process may keep requests waiting
    without answering any before the worker kills it (it is hung; gunicorn's own timeout
    watches only the worker)."""
    return _seconds(STALL_ENV, DEFAULT_STALL_SECONDS, environ)


def _seconds(name: str, default: float, environ: Mapping[str, str]) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        # RuntimeError: gunicorn prints it as "Error: ..." and exits, instead of a traceback
        raise RuntimeError(f"{name}={raw!r}: expected a number of seconds > 0")
    return value


class Refusal(NamedTuple):
    """An answer the event loop gives itself, in the service's error shape, before closing."""

    status: str
    error: str
    message: str

    def encode(self) -> bytes:
        body = json.dumps(
            {"error": self.error, "field": None, "message": self.message}, separators=(",", ":")
        ).encode()
        head = (
            f"HTTP/1.1 {self.status}\r\nDate: {util.http_date()}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


# gunicorn's refusals of a request it cannot parse, by status: the service's error codes
PROTOCOL_ERRORS: dict[int, str] = {
    400: "bad_request",
    403: "forbidden_client",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`, answering the service's JSON error instead of an HTML page.

    gunicorn's `Worker.handle_error` still decides the status (a malformed request line,
    header or chunk, a URI or header over its limits, an unknown expectation or transfer
    coding), logs it and writes the access line; only the page it sends changes. `run`
    installs it in the worker process."""
    error = PROTOCOL_ERRORS.get(status_int, "internal" if status_int >= 500 else "bad_request")
    refusal = Refusal(f"{status_int} {reason}", error, mesg or reason.lower())
    util.write_nonblock(sock, refusal.encode())


TIMED_OUT = Refusal(
    "408 Request Timeout", "request_timeout", "the request was not received in time"
)
HEAD_TOO_LARGE = Refusal(
    "431 Request Header Fields Too Large",
    "request_header_fields_too_large",
    f"the request head is over {HEAD_LIMIT} bytes",
)
BODY_TOO_LARGE = Refusal(
    "413 Request Entity Too Large", "request_entity_too_large", "the body is over the size limit"
)


class _Conn(TConn):
    """A gthread connection that carries what the event loop read, and closes without blocking."""

    def __init__(self, worker: BufferingThreadWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.buffered = b""  # read by the event loop, not yet in the parser
        self.whole = True  # the request handed off is complete in memory
        self.continued = False  # the event loop sent "100 Continue"

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            super().close()


class _Pending:
    """A connection whose request is being read by the event loop."""

    __slots__ = ("conn", "continued", "deadline", "reader", "registered")

    def __init__(self, conn: _Conn, reader: RequestReader, deadline: float) -> None:
        self.conn = conn
        self.reader = reader
        self.deadline = deadline
        self.registered = False
        self.continued = False


class _Linger:
    """A closing connection: until when it may be read, and how much was read."""

    __slots__ = ("deadline", "drained")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.drained = 0


class BufferingThreadWorker(ThreadWorker):
    """gthread with whole requests read in the event loop; see the module docstring."""

    sockets: list[Any]  # gunicorn's listeners of this worker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout = client_timeout()
        self.body_limit = DEFAULT_BODY_LIMIT
        cfg = self.cfg
        self.passthrough = bool(
            cfg.is_ssl
            or str(cfg.proxy_protocol).lower() not in ("off", "false", "none")
            or cfg.http2_cleartext in ("prior-knowledge", "both")
        )
        # both in deadline order: a deadline is always now + a constant
        self.buffering: dict[_Conn, _Pending] = {}
        self.lingering: dict[socket.socket, _Linger] = {}
        # one thread: requests are answered in the loop, without the pool (`serve_inline`)
        self.inline = self.cfg.threads == 1 and not self.passthrough
        # the requests of this turn of the loop waiting for their commit (None: each alone)
        self.turn: Turn | None = None
        # the scorer in a process of its own (`risk_service/scoring_process.py`)
        self.scoring: scoring.RemoteScorer | None = None
        self.splits = False
        self.beside = False
        if self.inline and turn_commits():
            self.beside = reasons_beside(workers=self.cfg.workers)
            self.splits = scoring_process(workers=self.cfg.workers)
            # with a scoring process, TreeSHAP runs beside that process's loop, not this one
            self.turn = Turn(self.method_queue.defer if self.beside and not self.splits else None)
        # --reuse-port: listen only once loaded (gunicorn_conf.post_fork sets it)
        self.listens_when_loaded = False
        self.timed_out = 0  # since the last warning
        self.warned_at = -math.inf

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the arbiter, at start: a bad RISK_CLIENT_TIMEOUT_SECONDS stops gunicorn there."""
        super().check_config(cfg, log)
        client_timeout()
        turn_commits()
        reasons_beside()
        scoring_process()
        scoring_stall()

    def load_wsgi(self) -> None:
        """With a scoring process: fork it first (no thread exists yet), let it load the
        application and wait until it is ready; then load this worker's own, a front that
        answers /score's HTTP side and hands the rest over (`scoring_process.FrontRouter`).
        Then, with ``--reuse-port``, start listening (`gunicorn_conf.post_fork`)."""
        if not self.splits:
            super().load_wsgi()
        else:
            self.scoring = scoring.fork_child(self.app.wsgi, self.sockets, beside=self.beside)
            os.environ[scoring.FRONT_ENV] = "1"
            super().load_wsgi()
            scoring.install_front(self.wsgi, self.scoring)
        if self.listens_when_loaded:  # --reuse-port: see gunicorn_conf.post_fork
            self.sockets = gunicorn_sock.create_sockets(self.cfg, self.log)
            for listener in self.sockets:
                util.close_on_exec(listener)

    def run(self) -> None:
        """Bodies are bounded by the application's limit (Flask's MAX_CONTENT_LENGTH)."""
        config = getattr(self.wsgi, "config", None)
        limit = config.get("MAX_CONTENT_LENGTH") if isinstance(config, Mapping) else None
        if isinstance(limit, int) and limit > 0:
            self.body_limit = limit
        util.write_error = write_json_error  # JSON, not HTML: see write_json_error
        http_response.install()  # a response's head and body in one send
        if self.scoring is not None:
            self.scoring.attach(self.poller, self.method_queue.defer, stall=scoring_stall())
            self.scoring.on_dead = self.scoring_gone
        try:
            super().run()
        finally:
            if self.turn is not None:
                self.turn.close()
            if self.scoring is not None:
                self.scoring.stop()

    def scoring_gone(self) -> None:
        """The scoring process died: stop, so that gunicorn starts a worker with a new one."""
        self.alive = False

    # -- reading requests in the event loop ----------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        """As gthread's, with `_Conn`: the request is then read by `enqueue_req`."""
        try:
            sock, client = listener.accept()
            self.nr_conns += 1
            conn = _Conn(self, self.cfg, sock, client, listener.getsockname())
            self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def enqueue_req(self, conn: _Conn) -> None:
        """Called for a new connection, a kept-alive one that became readable, and one whose
        parser read ahead into its next request: read that request before a thread takes it."""
        if self.passthrough or conn.is_http2 or not isinstance(conn, _Conn):
            super().enqueue_req(conn)
            return
        read_ahead = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        reader = RequestReader(read_ahead, body_limit=self.body_limit)
        pending = _Pending(conn, reader, time.monotonic() + self.client_timeout)
        if conn.sock.getblocking():  # a kept-alive one is non-blocking already (a system call)
            conn.sock.setblocking(False)
        self.buffering[conn] = pending
        self.on_readable(pending)  # often the request is there already

    def on_readable(self, pending: _Pending, _sock: Any = None) -> None:
        if self.buffering.get(pending.conn) is not pending:
            return  # an event from before it was handed off or closed
        eof = False
        try:
            for _ in range(READS_PER_EVENT):
                if pending.reader.status is not Status.MORE:
                    break
                data = pending.conn.sock.recv(RECV_SIZE)
                if not data:
                    eof = True
                    break
                pending.reader.feed(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            eof = True  # reset by the client
        status = pending.reader.status
        if status is Status.MORE and eof:
            self.finish(pending)
            pending.conn.close()
        elif status is Status.MORE:
            if pending.reader.expects_continue and not pending.continued:
                self.send_continue(pending)
            elif not pending.registered:
                callback = functools.partial(self.on_readable, pending)
                self.poller.register(pending.conn.sock, selectors.EVENT_READ, callback)
                pending.registered = True
        elif status is Status.HEAD_TOO_LARGE:
            self.refuse(pending, HEAD_TOO_LARGE)
        elif status is Status.BODY_TOO_LARGE:
            self.refuse(pending, BODY_TOO_LARGE)
        else:
            self.hand_off(pending, whole=status is Status.WHOLE)

    def send_continue(self, pending: _Pending) -> None:
        """Tell an expecting client to send its body (gunicorn would, from a thread)."""
        try:
            sent = pending.conn.sock.send(CONTINUE)
        except OSError:
            sent = 0
        if sent == len(CONTINUE):
            pending.continued = True
            self.on_readable(pending)  # registers it
        elif sent == 0:
            self.hand_off(pending, whole=False)  # gunicorn's thread sends it, as in gthread
        else:
            self.finish(pending)
            pending.conn.close()

    def hand_off(self, pending: _Pending, *, whole: bool) -> None:
        """To the thread pool, with the bytes read (the parser gets them in `handle`); with
        one thread, answered here in the loop (`serve_inline`), but for `POOL_PATHS`: the
        pool's thread answers those while the loop goes on answering the rest."""
        self.finish(pending, closing=False)
        conn = pending.conn
        conn.buffered = pending.reader.new_bytes()
        conn.whole = whole
        conn.continued = pending.continued
        conn.data_ready = True  # gthread's handle() must not wait for a first byte again
        if self.inline and not pending.reader.target.startswith(POOL_PATHS):
            if self.turn is not None:
                self.turn.run(functools.partial(self.serve_inline, conn))
            else:
                self.serve_inline(conn)
        else:
            super().enqueue_req(conn)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """One turn of the loop; at its end the decisions its requests made commit together
        and those requests answer (`risk_service/turns.py`)."""
        try:
            super().wait_for_and_dispatch_events(timeout)
        finally:
            if self.turn is not None:
                self.turn.flush()

    def serve_inline(self, conn: _Conn) -> None:
        """Answer a whole request in the loop's own thread (in a greenlet of its own, which
        waits for the end of the turn to commit its decision), then do what gthread does when
        a pool thread is done (`finish_request`: keep alive, or close).

        With one thread the pool only adds two hand-offs a request (submit to the thread, its
        "done" back to the loop through a pipe), each a wake-up of another thread and a turn
        of the GIL: measured as more than half the CPU of a request to the empty route. A request
        already read ahead on the connection (pipelining) is answered on the next turn of the
        loop, so a client sending many at once cannot make this recurse.
        """
        done: futures.Future[Any] = futures.Future()
        try:
            done.set_result(self.handle(conn))
        except Exception as exc:  # as the pool keeps it: finish_request closes the connection
            done.set_exception(exc)
        parser = conn.parser
        if parser is not None and parser.unreader.buf.getvalue():
            self.method_queue.defer(self.finish_request, conn, done)
        else:
            self.finish_request(conn, done)

    def finish(self, pending: _Pending, *, closing: bool = True) -> None:
        """Stop reading this connection; `closing`: it is about to be closed."""
        if self.buffering.get(pending.conn) is not pending:
            return
        del self.buffering[pending.conn]
        if pending.registered:
            pending.registered = False
            self._unregister(pending.conn.sock)
        if closing:
            self.nr_conns -= 1

    def refuse(self, pending: _Pending, answer: Refusal) -> None:
        """Answer from the event loop (408, 413, 431) and close."""
        self.finish(pending)
        with contextlib.suppress(OSError):  # best effort: the client may be gone, or not reading
            pending.conn.sock.send(answer.encode())
        self.linger(pending.conn.sock)

    # -- in the thread ---------------------------------------------------------------------------
    def handle(self, conn: _Conn) -> Any:
        if conn.buffered:
            data, conn.buffered = conn.buffered, b""
            conn.init()  # what gthread's handle() does first; a no-op the second time
            if not conn.is_http2:
                # after any read-ahead the parser holds: those bytes came first
                buf = conn.parser.unreader.buf
                buf.seek(0, os.SEEK_END)
                buf.write(data)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: _Conn) -> Any:
        if not conn.whole:
            req.force_close()  # answer with "Connection: close", then close without reading on
        if conn.continued:
            conn.continued = False
            # sent already: once is enough (gunicorn 27's private flag; were it renamed, the
            # client would get a second "100 Continue", which clients must accept)
            req._expected_100_continue = False
        return super().handle_request(req, conn)

    # -- timeouts and closing -------------------------------------------------------------------
    def murder_pending(self) -> None:
        """Called by gthread's loop about once a second: also expire reads and lingering closes,
        and kill a hung scoring process."""
        super().murder_pending()
        now = time.monotonic()
        if self.scoring is not None:
            self.scoring.kill_if_stalled(now)
        while self.buffering:
            pending = next(iter(self.buffering.values()))
            if pending.deadline > now:
                break
            self.expire(pending)
        while self.lingering:
            sock = next(iter(self.lingering))
            if self.lingering[sock].deadline > now:
                break
            self._close_lingering(sock)
        if self.timed_out and now - self.warned_at >= LOG_EVERY_SECONDS:
            self.log.warning(
                "closed %d connection(s) with a request not received within %g s (408)",
                self.timed_out,
                self.client_timeout,
            )
            self.timed_out, self.warned_at = 0, now

    def expire(self, pending: _Pending) -> None:
        from risk_service import metrics

        if pending.reader.data.strip(b"\r\n"):
            metrics.client_timed_out("partial")
            self.timed_out += 1
            self.refuse(pending, TIMED_OUT)
        else:  # a silent connection: nothing to answer
            metrics.client_timed_out("idle")
            self.finish(pending)
            pending.conn.close()

    def linger(self, sock: socket.socket) -> None:
        """Close like util.close_graceful (FIN, then read what the client still sends, so its
        unread bytes do not turn the close into a reset that loses the answer), in the loop."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._on_lingering_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = _Linger(time.monotonic() + LINGER_SECONDS)

    def _on_lingering_readable(self, sock: socket.socket) -> None:
        linger = self.lingering.get(sock)
        if linger is None:
            return
        try:
            for _ in range(READS_PER_EVENT):
                data = sock.recv(RECV_SIZE)
                linger.drained += len(data)
                if not data or linger.drained >= LINGER_MAX_BYTES:
                    break
            else:
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        del self.lingering[sock]
        self._unregister(sock)
        util.close(sock)

    def _unregister(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
