"""`http_response.CoalescingResponse`: the same bytes as gunicorn's response, fewer sends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi

from risk_service import http_response

GUNICORN_RESPONSE = wsgi.Response  # before any install() of this process


class RecordingSocket:
    """What a response sends, send by send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def request(method: str = "POST", version: tuple[int, int] = (1, 1)) -> Any:
    return SimpleNamespace(method=method, version=version, should_close=lambda: False)


def answer(
    response_class: type,
    status: str,
    headers: list[tuple[str, str]],
    body: list[bytes],
    *,
    method: str = "POST",
    version: tuple[int, int] = (1, 1),
) -> list[bytes]:
    """The sends of one response of ``response_class``, written as gunicorn's gthread worker
    writes it (each body piece, then close)."""
    sock = RecordingSocket()
    resp = response_class(request(method, version), sock, Config())
    resp.start_response(status, headers)
    for piece in body:
        resp.write(piece)
    resp.close()
    return sock.sends


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util, "http_date", lambda *_: "Sun, 06 Dec 2026 08:00:00 GMT")


JSON = [("Content-Type", "application/json")]
CASES = {
    "one-piece JSON answer": ("200 OK", [*JSON, ("Content-Length", "12")], [b'{"ok": true}'], {}),
    "an error": ("400 BAD REQUEST", [*JSON, ("Content-Length", "2")], [b"{}"], {}),
    "two pieces": ("200 OK", [("Content-Length", "6")], [b"abc", b"def"], {}),
    "chunked (no length)": ("200 OK", JSON, [b"abc", b"def"], {}),
    "HTTP/1.0, no length": ("200 OK", JSON, [b"abc"], {"version": (1, 0)}),
    "HEAD: no body sent": ("200 OK", [("Content-Length", "3")], [b"abc"], {"method": "HEAD"}),
    "204": ("204 NO CONTENT", [], [b""], {}),
    "no body written": ("200 OK", [("Content-Length", "0")], [], {}),
    "an empty piece first": ("200 OK", [("Content-Length", "3")], [b"", b"abc"], {}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_bytes_on_the_wire_are_gunicorns(case: str) -> None:
    status, headers, body, kwargs = CASES[case]
    theirs = answer(GUNICORN_RESPONSE, status, headers, body, **kwargs)
    ours = answer(http_response.CoalescingResponse, status, headers, body, **kwargs)
    assert b"".join(ours) == b"".join(theirs)
    assert len(ours) <= len(theirs)


def test_a_one_piece_answer_is_one_send_where_gunicorn_makes_two() -> None:
    status, headers, body, _ = CASES["one-piece JSON answer"]
    theirs = answer(GUNICORN_RESPONSE, status, headers, body)
    ours = answer(http_response.CoalescingResponse, status, headers, body)
    assert len(theirs) == 2 and theirs[1] == body[0]
    assert ours == [theirs[0] + theirs[1]]


def test_the_head_comes_first_when_a_write_sends_nothing() -> None:
    """A HEAD request's answer: the body is dropped, the head still goes out in that write,
    before anything the response sends later."""
    sock = RecordingSocket()
    resp = http_response.CoalescingResponse(request("HEAD"), sock, Config())
    resp.start_response("200 OK", [("Content-Length", "3")])
    resp.write(b"abc")
    assert len(sock.sends) == 1 and sock.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert sock.sends[0].endswith(b"\r\n\r\n")


def test_install_only_where_gunicorn_has_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "Response", GUNICORN_RESPONSE)
    assert http_response.install() is True
    assert wsgi.Response is http_response.CoalescingResponse

    class Older:  # a gunicorn whose Response writes its body without `_emit_body`
        pass

    monkeypatch.setattr(wsgi, "Response", Older)
    assert http_response.install() is False
    assert wsgi.Response is Older
