"""A response's headers and its body in one send, where gunicorn makes two.

gunicorn writes a response's head when the application's first body bytes arrive, then the
bytes themselves: two `sendall` calls for every one-piece JSON answer. With TCP_NODELAY (which
gunicorn sets) each is a segment of its own, so the client is woken for the head and again
for the body, and both ends pay a system call more per request. `CoalescingResponse` keeps the
head back during one `write` and sends it with the bytes that write puts on the wire; whatever
else happens in that write (a body a HEAD request or a 204 may not carry, a chunked answer)
still gets the head first, on its own. Every other path (sendfile, `close` without a body, an
early hint) sends the head at once, as gunicorn does.

Installed by the worker (`install`) only where gunicorn's `Response` has the hook it relies on
(`_emit_body`, gunicorn 27); elsewhere gunicorn's own stays.
"""

from __future__ import annotations

from typing import Any

from gunicorn import util
from gunicorn.http import wsgi


class CoalescingResponse(wsgi.Response):
    """gunicorn's response, sending its head with the first body bytes of a `write`."""

    _deferring = False
    _head: bytes | None = None
    headers_sent: bool  # gunicorn's, set in its __init__

    def send_headers(self) -> None:
        if self.headers_sent or not self._deferring:
            super().send_headers()
            return
        tosend = self.default_headers()  # as gunicorn builds it, kept back for one write
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        self._head = util.to_bytestring("{}\r\n".format("".join(tosend)), "latin-1")
        self.headers_sent = True

    def write(self, arg: Any) -> None:
        self._deferring = True
        try:
            super().write(arg)
        finally:
            self._deferring = False
            self._send_head()  # a write that put no bytes on the wire

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is not None and not self.chunked:
            util.write(self.sock, head + data)
            return
        if head is not None:
            util.write(self.sock, head)
        super()._emit_body(data)

    def _send_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            util.write(self.sock, head)


def install() -> bool:
    """Make gunicorn build `CoalescingResponse` in this process; False (nothing changed) where
    its `Response` lacks the hook."""
    if not callable(getattr(wsgi.Response, "_emit_body", None)):
        return False
    wsgi.Response = CoalescingResponse
    return True
