"""Private servers and a fault proxy for degradation tests: never the machine's shared services.

``PrivateRedis`` runs its own redis-server on a free port (no persistence by default;
``persistent=True`` keeps an append-only file in its directory, so a stopped server comes
back with its data), which a test may stop, start again on the same port, or pause.
``PrivatePostgres`` runs its own PostgreSQL cluster (initdb in a temporary directory, as the
``postgres`` user when run as root, since PostgreSQL refuses to run as root), which may be
stopped and started again on the same port. ``FaultProxy`` sits between the service and any
TCP server and can add a delay per chunk or refuse and cut connections, to make a healthy
server look slow or down; ``ProxyProcess`` is the same proxy in a child process of its own
(`python tests/servers.py proxy PORT`), for callers whose own threads would otherwise hold
the GIL while a forwarded chunk waits (a load generator in the same process adds
milliseconds to every proxied call).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, up: bool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} in {timeout} s")


class PrivateRedis:
    """A redis-server of the test's own on 127.0.0.1:<port>.

    Nothing is saved to disk unless ``persistent``: then an append-only file (fsync every
    second, and at a clean shutdown) lives in ``workdir``, and a server stopped and started
    again on the same port comes back with every key it had.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(persistence if self.persistent else ["--appendonly", "no"]),
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        wait_port(self.port, up=False)


def _postgres_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} is not installed (Debian package postgresql)")


class PrivatePostgres:
    """A PostgreSQL cluster of the caller's own on 127.0.0.1:<port>, database ``postgres``.

    The cluster lives in a fresh temporary directory (``initdb`` at the first ``start``,
    trust authentication, its Unix socket there too), owned by the ``postgres`` user when
    this runs as root (``runuser -u postgres``: PostgreSQL refuses to run as root).
    ``stop`` shuts it down (``pg_ctl stop -m fast``: sessions are disconnected, committed
    data is kept) and ``start`` brings it back on the same port; ``close`` stops it and
    removes the directory. Committed transactions survive a stop (fsync stays on).
    """

    def __init__(self, port: int | None = None) -> None:
        self.initdb = _postgres_binary("initdb")
        self.pg_ctl = _postgres_binary("pg_ctl")
        self.port = port or free_port()
        self.base = Path(tempfile.mkdtemp(prefix="risk-pg-"))
        self.data = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.base, user="postgres", group="postgres")
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        subprocess.run(
            [*prefix, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            cwd=self.base,
        )

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"
            )
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        wait_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.running = False
        wait_port(self.port, up=False)

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


class FaultProxy:
    """TCP proxy 127.0.0.1:<port> -> target; ``delay_s`` per forwarded chunk, ``down`` cuts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self._down = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_down(self, down: bool) -> None:
        """Down: close every open connection and refuse new ones until set up again."""
        self._down = down
        if down:
            with self._lock:
                conns, self._conns = self._conns, []
            for c in conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns = [c for c in self._conns if c is not src and c is not dst]

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.set_down(True)


class ProxyProcess:
    """A ``FaultProxy`` in a child process, with the same attributes: ``port``, ``url``,
    ``delay_s`` (assign to change it), ``set_down`` and ``close``.

    Commands go to the child's standard input, one per line (``delay 0.025``, ``down``,
    ``up``); each is acknowledged before the call returns. The child exits when its
    standard input closes, so it never outlives the caller.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "proxy", str(target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        self._delay_s = 0.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _command(self, line: str) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"fault proxy did not acknowledge {line!r}")

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._command(f"delay {float(value)!r}")
        self._delay_s = float(value)

    def set_down(self, down: bool) -> None:
        self._command("down" if down else "up")

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(timeout=5)


def _serve_proxy(target_port: int) -> None:
    """`python tests/servers.py proxy PORT`: print the proxy's port, obey stdin, exit at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this stops
    proxy = FaultProxy(target_port)
    print(proxy.port, flush=True)
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "delay":
            proxy.delay_s = float(arg)
        elif word in ("down", "up"):
            proxy.set_down(word == "down")
        print("ok", flush=True)
    proxy.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "proxy":
        _serve_proxy(int(sys.argv[2]))
    else:
        sys.exit("usage: python tests/servers.py proxy TARGET_PORT")
