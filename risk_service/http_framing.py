"""Where an HTTP/1.1 request ends (RFC 9112 framing), found as its bytes arrive.

The buffering worker (worker.py) reads requests in its event loop and gives a connection to a
thread only once `RequestReader` says the whole request is in memory, or that the parser or
the application can answer without reading more (bad framing, a body over the limit).
"""

from __future__ import annotations

import enum

HEAD_LIMIT = 64 * 1024  # a head not ended by then gets a 431
DEFAULT_BODY_LIMIT = 1024 * 1024  # when the application declares no MAX_CONTENT_LENGTH
FRAMING_ALLOWANCE = 64 * 1024  # chunk-size lines and trailers on top of the body limit
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Status(enum.Enum):
    """What to do with a request read so far."""

    MORE = "more"  # wait for more bytes
    WHOLE = "whole"  # head and body are in memory
    HAND_OFF = "hand_off"  # not whole, but the parser or the app answers without reading more
    HEAD_TOO_LARGE = "head_too_large"
    BODY_TOO_LARGE = "body_too_large"


class RequestReader:
    """Where one HTTP/1.1 request ends (RFC 9112 framing), found as its bytes arrive.

    Each `feed` resumes where the last one stopped: a request sent a byte at a time is not
    scanned again from its start. Requests the parser refuses from their head alone (bad
    framing headers, an unknown expectation, a bare LF) are handed off at once, so a client
    hears why; anything it would read on for stays here. ``data`` starts with ``read_ahead``:
    bytes the parser already holds.
    """

    def __init__(self, read_ahead: bytes = b"", *, body_limit: int = DEFAULT_BODY_LIMIT) -> None:
        self.data = bytearray(read_ahead)
        self.held = len(read_ahead)
        self.body_limit = body_limit
        self.status = Status.MORE
        self.expects_continue = False  # HTTP/1.1 "Expect: 100-continue" and a body to come
        self.target = b""  # the request-target (path and query), once the head is in
        self._head_end = -1
        self._scan = 0  # where the search for the end of the head (or trailers) resumes
        self._lf_checked = 0
        self._body_end = -1  # with a Content-Length
        self._chunk = -1  # chunked: where the next chunk-size line starts
        self._trailers = False
        self.feed(b"")

    def feed(self, data: bytes) -> Status:
        """Add bytes received; the status after them."""
        self.data += data
        if self.status is Status.MORE:
            self.status = self._advance()
        return self.status

    def new_bytes(self) -> bytes:
        """What the parser does not hold yet: everything after ``read_ahead``."""
        return bytes(self.data[self.held :])

    def _advance(self) -> Status:
        if self._head_end < 0:
            end = self.data.find(b"\r\n\r\n", self._scan)
            if end < 0:
                self._scan = max(0, len(self.data) - 3)
                if self._bare_lf():
                    return Status.HAND_OFF  # the parser refuses it (400) without waiting
                return Status.HEAD_TOO_LARGE if len(self.data) > HEAD_LIMIT else Status.MORE
            self._head_end = end + 4
            framing = self._framing(bytes(self.data[:end]))
            if framing is not Status.MORE:
                return framing
        if self._chunk >= 0:
            return self._chunks()
        return Status.WHOLE if len(self.data) >= self._body_end else Status.MORE

    def _bare_lf(self) -> bool:
        """A head line ends in LF alone: the parser refuses it at once (RFC 9112 section 2.2)."""
        at = self.data.find(b"\n", self._lf_checked)
        while at >= 0:
            if at == 0 or self.data[at - 1] != 0x0D:
                return True
            at = self.data.find(b"\n", at + 1)
        self._lf_checked = len(self.data)
        return False

    def _framing(self, head: bytes) -> Status:
        """How the body is delimited, from the head (without its final blank line)."""
        lines = head.split(b"\r\n")
        if not lines[0]:
            lines = lines[1:]  # one empty line may precede the request line
        if not lines:
            return Status.HAND_OFF
        self.target = lines[0].partition(b" ")[2].rpartition(b" ")[0]
        fields: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return Status.HAND_OFF
            fields.setdefault(name.strip(b" \t").lower(), []).append(value.strip(b" \t"))
        expect = fields.get(b"expect", [])
        if any(value.lower() != b"100-continue" for value in expect):
            return Status.HAND_OFF  # 417
        codings = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if codings is not None:
            names = [c.strip(b" \t").lower() for v in codings for c in v.split(b",")]
            if lengths is not None or names[-1] != b"chunked" or names.count(b"chunked") != 1:
                return Status.HAND_OFF  # 400 or 501: framing the parser will not read
            self._chunk = self._head_end
        elif lengths is not None:
            if len(lengths) != 1 or not lengths[0].isdigit():
                return Status.HAND_OFF  # 400
            if int(lengths[0]) > self.body_limit:
                return Status.HAND_OFF  # 413 from the header, nothing read
            self._body_end = self._head_end + int(lengths[0])
        else:
            return Status.WHOLE
        self.expects_continue = bool(expect) and lines[0].endswith(b" HTTP/1.1")
        return Status.MORE

    def _chunks(self) -> Status:
        data = self.data
        while not self._trailers:
            at = self._chunk
            eol = data.find(b"\r\n", at)
            if eol < 0:
                return self._more_body()
            size, semicolon, _ = bytes(data[at:eol]).partition(b";")
            if semicolon:
                size = size.rstrip(b" \t")  # whitespace only before an extension
            if not size or not _HEX.issuperset(size):
                return Status.HAND_OFF  # 400 from the parser
            end = eol + 2 + int(size, 16)
            if end - self._head_end > self.body_limit + FRAMING_ALLOWANCE:
                return Status.BODY_TOO_LARGE  # declared: no need to wait for it
            if end == eol + 2:
                self._trailers = True
                self._chunk = self._scan = eol + 2
                break
            if len(data) < end + 2:
                return self._more_body()
            if data[end : end + 2] != b"\r\n":
                return Status.HAND_OFF  # 400 from the parser
            self._chunk = end + 2
        # the last chunk: an empty line, or trailer fields and then an empty line
        if data[self._chunk : self._chunk + 2] == b"\r\n":
            return Status.WHOLE
        if len(data) - self._chunk >= 2 and data.find(b"\r\n\r\n", self._scan) >= 0:
            return Status.WHOLE
        self._scan = max(self._chunk, len(data) - 3)
        return self._more_body()

    def _more_body(self) -> Status:
        over = len(self.data) - self._head_end > self.body_limit + FRAMING_ALLOWANCE
        return Status.BODY_TOO_LARGE if over else Status.MORE
