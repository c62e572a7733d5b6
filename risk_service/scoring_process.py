"""The scoring process: with the in-memory state, the scorer runs in a process of its own.

The in-memory state lives in one process, and in the one-thread worker everything ran in its
event loop: HTTP, validation, features, models, policy, the decision record and the log
append. That loop thread used a whole core while the machine's second core sat idle
(docs/benchmarks.md, "The idle core"). Now the worker forks a scoring process before it loads
the application (`fork_child`, no threads exist yet) and keeps the HTTP side:

- The **worker** (the front) reads requests, validates /score bodies, answers /health,
  /metrics, /openapi.json and /docs itself, and hands everything else over: a /score
  request's validated event goes to the scoring process at once, and its greenlet
  (`turns.RequestGreenlet`) parks while the loop reads, validates and sends the next; every
  other route goes over whole (its WSGI environ and body, `FrontRouter`), answered there by
  the full application.
- The **scoring process** owns the scorer, the state, the models and their watcher, the
  decision log and the snapshots. Each pass of its loop takes every event that has arrived
  as one turn (`turns.Turn`: one commit for all of them) and sends their answers back in one
  message; the worker's loop reads them as it reads sockets (`RemoteScorer.on_readable`)
  and resumes the parked requests, which answer their clients. TreeSHAP reasons run on a
  helper thread beside its loop (`turns.beside`), forwarded requests on a few threads, as
  the worker ran them before.

Sending each event at once, not a turn's events together, is what makes the two processes
work at the same time: under a closed-loop load every connection's request arrives in the
same turn, so whole turns went back and forth and each process waited for the other (1,398
against 1,690 /score requests a second, docs/benchmarks.md). The scoring process batches by
itself: what arrived while it worked is its next pass.

A decision is still answered only once committed: the scoring process sends an answer after
its turn's commit. **Stopping**: at a graceful stop the worker sends ``stop`` after its last
request and waits for the scoring process, which writes the state snapshot and closes the log.
If the worker dies, the scoring process sees its socket close and exits without a snapshot
(as a killed worker left none before). If the scoring process dies, the worker answers what
was waiting with 503 (`ScoringUnavailable`: nothing was acknowledged, a retry with the same
event_id is safe) and exits; gunicorn starts a new worker, whose scoring process recalls the
log's recent decisions, so retries get the answers already logged. If it hangs (requests
waiting ``RISK_SCORING_STALL_SECONDS``, 30 by default, without any answer), the worker kills
it, then the same: gunicorn's own timeout watches only the worker, which a hung scoring
process leaves alive and answering /health.

``RISK_SCORING_PROCESS`` (`worker.scoring_process`): on by default where the worker gets a
core to itself and another is left, off otherwise (then everything runs in the worker, as
before). Only the in-memory state uses it: on Redis the workers share the state and each
scores its own requests.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import greenlet

from risk_service.errors import ApiError
from risk_service.turns import RequestGreenlet, Turn

log = logging.getLogger("risk_service.scoring_process")

HEADER = struct.Struct("<I")
SOCKET_BUFFER = 4 << 20
READ_SIZE = 1 << 20
FORWARD_THREADS = 4
THREAD_WAIT_SECONDS = 60.0  # a forwarded admin request (a bundle's verification) at most
STOP_WAIT_SECONDS = 25.0  # within gunicorn's graceful timeout of 30 s (`risk serve`)
# Set in the worker after the fork: its application is a front (`risk_service.create_app`).
FRONT_ENV = "RISK_SCORING_FRONT"
# Answered by the worker itself; every other path goes to the scoring process.
FRONT_PATHS = frozenset({"/score", "/_empty", "/health", "/metrics", "/openapi.json", "/docs"})
# What of a WSGI environ crosses to the scoring process (the rest are live objects).
_ENVIRON_TYPES = (str, int, float, bool, tuple)


GONE = "the scoring process exited; retry with the same event_id"


class ScoringUnavailable(ApiError):
    """The scoring process exited: nothing was acknowledged; retry with the same event_id."""

    status = 503
    error = "scoring_unavailable"


# -- framing -------------------------------------------------------------------------------------
def frame(message: Any) -> bytes:
    """A message as its length and its pickle (the peer is this process's own fork, over a
    socket pair no one else holds)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def receive_into(sock: socket.socket, buf: bytearray, scratch: bytearray) -> int:
    """Append what ``sock`` has to ``buf`` through ``scratch`` (its size the most a read takes);
    the bytes read, 0 at the end. ``recv(size)`` allocated ``size`` bytes a read: with a
    megabyte, a fresh mapping and two more system calls to shrink and free it."""
    n = sock.recv_into(scratch)
    buf += memoryview(scratch)[:n]
    return n


def take_frames(buf: bytearray) -> list[Any]:
    """The whole messages at the start of ``buf``, removed from it."""
    messages: list[Any] = []
    start = 0
    while len(buf) - start >= HEADER.size:
        (size,) = HEADER.unpack_from(buf, start)
        end = start + HEADER.size + size
        if len(buf) < end:
            break
        messages.append(pickle.loads(buf[start + HEADER.size : end]))
        start = end
    if start:
        del buf[:start]
    return messages


def pack_error(exc: BaseException) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """An exception as its class's path, args and attributes (ApiError's field and status
    would not survive pickling's ``cls(*args)``)."""
    cls = type(exc)
    state = {k: v for k, v in vars(exc).items() if _picklable(v)}
    args = tuple(a if _picklable(a) else repr(a) for a in exc.args)
    return cls.__module__, cls.__qualname__, args, state


def unpack_error(packed: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> Exception:
    module, qualname, args, state = packed
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(state)
    except Exception:
        return RuntimeError(f"{module}.{qualname}{args!r}")
    if not isinstance(exc, Exception):
        return RuntimeError(f"{module}.{qualname}{args!r}")
    return exc


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


# -- the worker's side ----------------------------------------------------------------------------
class RemoteScorer:
    """The worker's handle on the scoring process: ``score_request`` as `Scorer` has it, and
    ``forward`` for whole requests. Used from the event loop (requests park their greenlet)
    or from another thread (it waits); only the loop's thread touches the socket."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.dead: str | None = None  # why the scoring process is gone
        self.on_dead: Callable[[], None] | None = None
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._waiting: dict[int, greenlet.greenlet | Future[Any]] = {}
        self._queued: deque[bytes] = deque()  # frames from other threads, for the loop to send
        self._out = bytearray()
        self._in = bytearray()
        self._scratch = bytearray(READ_SIZE)
        self._poller: selectors.BaseSelector | None = None
        self._defer: Callable[..., None] | None = None
        self._writing = False
        self.stall = math.inf  # set by `attach`
        self._progress_at = time.monotonic()  # the last answer, or the start of waiting

    def attach(
        self, poller: selectors.BaseSelector, defer: Callable[..., None], *, stall: float
    ) -> None:
        """Read answers in the event loop; ``defer`` runs a callable in it from any thread;
        ``stall``: seconds without an answer while requests wait that mean it is hung."""
        self.sock.setblocking(False)
        self._poller, self._defer = poller, defer
        self.stall = stall
        poller.register(self.sock, selectors.EVENT_READ, self.on_readable)

    # -- requests --------------------------------------------------------------------------------
    def score_request(self, request: Any) -> tuple[dict[str, Any], bool]:
        """The scorer's answer and whether it is a replay; raises what the scorer raised."""
        return self._call(lambda seq: ("score", [(seq, request)]))

    def forward(self, environ: dict[str, Any], body: bytes) -> tuple[str, list[Any], bytes]:
        """A whole request answered by the scoring process's application."""
        return self._call(lambda seq: ("wsgi", seq, environ, body))

    def _call(self, message: Callable[[int], Any]) -> Any:
        """Send ``message(seq)`` and return its answer: a request greenlet parks meanwhile (the
        answer resumes it from the loop), any other thread waits."""
        current = greenlet.getcurrent()
        if isinstance(current, RequestGreenlet) and self._poller is not None:
            if self.dead is not None:
                raise ScoringUnavailable(GONE)
            seq = self._next_seq()
            self._wait(seq, current)
            self._send(frame(message(seq)))
            result = current.parent.switch()
        else:
            result = self._call_from_thread(message)
        return self._unwrap(result)

    def _unwrap(self, result: tuple[str, Any]) -> Any:
        kind, value = result
        if kind == "ok":
            return value
        if kind == "gone":
            raise ScoringUnavailable(GONE)
        raise unpack_error(value)

    def _wait(self, seq: int, waiter: greenlet.greenlet | Future[Any]) -> None:
        if not self._waiting:  # the stall clock starts when something waits
            self._progress_at = time.monotonic()
        self._waiting[seq] = waiter

    def kill_if_stalled(self, now: float) -> bool:
        """Kill the scoring process if requests have waited ``stall`` seconds without any
        answer: it is hung (a deadlock, a loop). Its socket then closes, and `_gone` answers
        503 and stops the worker. Called about once a second by the worker's loop."""
        if self.dead is not None or not self._waiting or now - self._progress_at < self.stall:
            return False
        log.error(
            "the scoring process answered nothing for %.0f s with %d request(s) waiting: killed",
            now - self._progress_at,
            len(self._waiting),
        )
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        return True

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _call_from_thread(self, message: Callable[[int], Any]) -> tuple[str, Any]:
        if self.dead is not None or self._defer is None:
            return ("gone", self.dead)
        seq = self._next_seq()
        future: Future[Any] = Future()
        self._wait(seq, future)
        self._queued.append(frame(message(seq)))
        self._defer(self._send_queued)
        if self.dead is not None:  # gone meanwhile: _gone may have missed this one
            self._waiting.pop(seq, None)
            return ("gone", self.dead)
        try:
            return future.result(timeout=THREAD_WAIT_SECONDS)
        except TimeoutError:
            self._waiting.pop(seq, None)
            return ("gone", "the scoring process did not answer in time")

    # -- in the event loop -----------------------------------------------------------------------
    def _send_queued(self) -> None:
        while self._queued:
            self._send(self._queued.popleft())

    def _send(self, data: bytes) -> None:
        if self.dead is not None:
            return
        self._out += data
        self._flush()

    def _flush(self, _sock: Any = None) -> None:
        try:
            while self._out:
                sent = self.sock.send(self._out)
                del self._out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._out.clear()
            self._later(partial(self._gone, f"the scoring process's socket failed: {exc}"))
            return
        want_write = bool(self._out)
        if want_write != self._writing and self._poller is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._poller.modify(self.sock, events, self._on_event)
            self._writing = want_write

    def _later(self, call: Callable[[], None]) -> None:
        """``call`` from the loop's own greenlet, on its next turn (a request greenlet must
        not resume the others)."""
        if self._defer is not None:
            self._defer(call)
        else:
            call()

    def _on_event(self, _sock: Any = None) -> None:
        self._flush()
        self.on_readable()

    def on_readable(self, _sock: Any = None) -> None:
        if self.dead is not None:
            return
        try:
            read = receive_into(self.sock, self._in, self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            read, why = 0, f"the scoring process's socket failed: {exc}"
        else:
            why = "the scoring process exited"
        if not read:
            self._gone(why)
            return
        self._progress_at = time.monotonic()
        for message in take_frames(self._in):
            if message[0] == "answers":
                for seq, result in message[1]:
                    self._resolve(seq, result)

    def _resolve(self, seq: int, result: tuple[str, Any]) -> None:
        waiter = self._waiting.pop(seq, None)
        if isinstance(waiter, Future):
            waiter.set_result(result)
        elif waiter is not None:
            waiter.switch(result)

    def _gone(self, why: str) -> None:
        """The scoring process is gone: what waits gets a 503, and the worker stops (gunicorn
        starts another, with a new scoring process)."""
        if self.dead is not None:
            return
        self.dead = why
        log.error(
            "%s: answering 503 to %d waiting request(s); the worker restarts",
            why,
            len(self._waiting),
        )
        if self._poller is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._poller.unregister(self.sock)
        for seq in list(self._waiting):
            self._resolve(seq, ("gone", why))
        if self.on_dead is not None:
            self.on_dead()

    # -- stopping --------------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> None:
        """At the worker's graceful stop: ask the scoring process to write its snapshot and
        exit, and wait for it (a new worker's scoring process must find the snapshot whole)."""
        if self.dead is None:
            with contextlib.suppress(OSError):
                self.sock.setblocking(True)
                self.sock.settimeout(timeout)
                self.sock.sendall(bytes(self._out) + frame(("stop",)))
        self.dead = self.dead or "stopped"
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._reap(timeout)
        self.sock.close()

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            if time.monotonic() >= deadline:
                log.error("the scoring process did not stop within %g s: killed", timeout)
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                break
            time.sleep(0.02)
        _metrics_gone(self.pid)


def _metrics_gone(pid: int) -> None:
    """Its live gauges no longer count (as gunicorn's child_exit does for a worker)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(pid, path)


class FrontRouter:
    """The worker's WSGI entry: `FRONT_PATHS` to its own application, every other request to
    the scoring process's, whole (environ and body)."""

    def __init__(self, front: Callable[..., Any], remote: RemoteScorer, body_limit: int) -> None:
        self.front = front
        self.remote = remote
        self.body_limit = body_limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "") in FRONT_PATHS:
            return self.front(environ, start_response)
        try:
            body = environ["wsgi.input"].read(self.body_limit + 1)
        except Exception as exc:  # e.g. a malformed chunk: the client's fault
            return _answer(start_response, 400, "bad_request", f"the body is malformed: {exc}")
        plain = {k: v for k, v in environ.items() if isinstance(v, _ENVIRON_TYPES)}
        try:
            status, headers, payload = self.remote.forward(plain, body)
        except ScoringUnavailable as exc:
            return _answer(start_response, 503, exc.error, exc.message)
        start_response(status, headers)
        return [payload]


def _answer(start_response: Callable[..., Any], status: int, error: str, message: str) -> Any:
    import orjson
    from werkzeug.http import HTTP_STATUS_CODES

    body = orjson.dumps({"error": error, "field": None, "message": message})
    start_response(
        f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def install_front(app: Any, remote: RemoteScorer) -> None:
    """Make the worker's application a front: /score scores through ``remote``, every other
    route is answered by the scoring process's application."""
    limit = app.config.get("MAX_CONTENT_LENGTH")
    app.extensions["risk"] = remote
    app.wsgi_app = FrontRouter(app.wsgi_app, remote, limit if isinstance(limit, int) else 1 << 20)


def fork_child(
    load_app: Callable[[], Any], close_fds: Iterable[Any], *, beside: bool
) -> RemoteScorer:
    """Fork the scoring process, which loads the application (``load_app``) and serves; here,
    wait until it is ready. Raises RuntimeError with its traceback if it could not start."""
    front, back = socket.socketpair()
    for s in (front, back):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    pid = os.fork()
    if pid == 0:  # the scoring process: never returns
        code = 1
        try:
            front.close()
            for fd in close_fds:
                with contextlib.suppress(Exception):
                    fd.close()
            code = ScoringProcess(back, beside=beside).run(load_app)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    back.close()
    remote = RemoteScorer(front, pid)
    buf = bytearray()
    while True:
        data = front.recv(READ_SIZE)
        if not data:
            remote._reap(1.0)
            raise RuntimeError("the scoring process exited while loading the application")
        buf += data
        messages = take_frames(buf)
        if messages:
            break
    kind, detail = messages[0]
    if kind != "ready":
        remote._reap(5.0)
        raise RuntimeError(f"the scoring process could not load the application:\n{detail}")
    remote._in = buf  # answers never come before requests, but keep what arrived
    return remote


# -- the scoring process ----------------------------------------------------------------------
class ScoringProcess:
    """The loop of the scoring process: messages in, answers out. Each pass takes every
    message that has arrived as one turn (`turns.Turn`: one commit for its decisions), and
    sends the turn's answers as one message. TreeSHAP reasons may run on a helper thread
    meanwhile (`turns.beside`, as in the worker's loop before): its request resumes in a later
    pass, woken through a pipe, and answers with that pass."""

    def __init__(self, sock: socket.socket, *, beside: bool) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.buf = bytearray()
        self.scratch = bytearray(READ_SIZE)
        self.answers: list[tuple[int, Any]] = []  # of this pass, sent at its end
        self.deferred: deque[Callable[[], Any]] = deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.turn = Turn(self.defer if beside else None)

    def defer(self, call: Callable[[], Any]) -> None:
        """Run ``call`` in the loop's pass (from the helper thread: a resumed request)."""
        self.deferred.append(call)
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self.wake_w, b"x")

    def run(self, load_app: Callable[[], Any]) -> int:
        for sig in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGQUIT,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGWINCH,
        ):
            signal.signal(sig, signal.SIG_IGN)  # it stops when the worker says, or is gone
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            app = load_app()
        except BaseException:
            self.send(("failed", traceback.format_exc()))
            return 1
        self.send(("ready", os.getpid()))
        return self.serve(app)

    def send(self, message: Any) -> None:
        data = frame(message)
        with self.send_lock:
            self.sock.sendall(data)

    def receive(self) -> list[Any] | None:
        """The messages that have arrived, waiting for one or for a deferred call (None:
        the worker is gone)."""
        messages = take_frames(self.buf)
        while not messages and not self.deferred:
            ready, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [])
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            if self.sock.fileno() in ready:
                try:
                    read = receive_into(self.sock, self.buf, self.scratch)
                except OSError:
                    read = 0
                if not read:
                    return None
                messages = take_frames(self.buf)
        return messages

    def serve(self, app: Any) -> int:
        scorer = app.extensions["risk"]
        pool = ThreadPoolExecutor(FORWARD_THREADS, thread_name_prefix="risk-forwarded")
        try:
            while True:
                messages = self.receive()
                if messages is None:  # the worker died: no snapshot, as a killed worker
                    log.warning("the worker is gone: the scoring process exits")
                    return 0
                while self.deferred:
                    self.deferred.popleft()()
                stopping = False
                for message in messages:
                    kind = message[0]
                    if kind == "score":
                        for seq, request in message[1]:
                            self.turn.run(partial(self._score_one, scorer, seq, request))
                    elif kind == "wsgi":
                        pool.submit(self._forward_one, app, *message[1:])
                    elif kind == "stop":
                        stopping = True
                self._finish_turn()
                if stopping:
                    while self.turn.beside or self.turn.parked:  # the last reasons, then stop
                        self.receive()
                        while self.deferred:
                            self.deferred.popleft()()
                        self._finish_turn()
                    pool.shutdown(wait=True)
                    self._stop(app)
                    return 0
        finally:
            pool.shutdown(wait=False)
            self.turn.close()

    def _score_one(self, scorer: Any, seq: int, request: Any) -> None:
        result: tuple[str, Any]
        try:
            result = ("ok", scorer.score_request(request))  # it may park: a later pass's list
        except Exception as exc:
            result = ("error", pack_error(exc))
        self.answers.append((seq, result))

    def _finish_turn(self) -> None:
        """Commit the pass's decisions, let its requests finish, send their answers. A request
        waiting for another parked beside waits for a later pass."""
        for _ in range(1000):
            self.turn.flush()
            if not self.turn.parked or self.turn.beside:
                break
            parked, self.turn.parked = self.turn.parked, []
            for request, _ in parked:  # waiting for a twin of this pass, now committed
                request.switch()
        if self.answers:
            answers, self.answers = self.answers, []
            self.send(("answers", answers))

    def _forward_one(self, app: Any, seq: int, environ: dict[str, Any], body: bytes) -> None:
        result: tuple[str, Any]
        try:
            result = ("ok", _run_wsgi(app, environ, body))
        except BaseException as exc:  # the application answers its own errors; a bug here
            log.exception("a forwarded request failed")
            result = ("error", pack_error(RuntimeError(repr(exc))))
        with contextlib.suppress(OSError):
            self.send(("answers", [(seq, result)]))

    def _stop(self, app: Any) -> None:
        from risk_service.service import save_snapshot

        try:
            save_snapshot(app)
        except Exception:  # the stop goes on: the next start is empty, as after a crash
            log.exception("could not write the state snapshot")
        scorer = app.extensions.get("risk")
        if scorer is not None:
            scorer.close()


def _run_wsgi(app: Any, environ: dict[str, Any], body: bytes) -> tuple[str, list[Any], bytes]:
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.errors"] = sys.stderr
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    answer: list[Any] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        answer[:] = [status, list(headers)]
        return lambda _data: None

    chunks = app(environ, start_response)
    try:
        payload = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return answer[0], answer[1], payload
