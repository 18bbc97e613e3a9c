"""One HTTP request that the server cannot stretch: bounded time, bounded
body, no redirects.

A collector is a network peer, not a trusted part of the agent. urllib's
own limits are per call: its timeout bounds each recv(), so a body sent at
one byte per second holds the caller for ever, and read() with no size
takes an endless body until memory runs out. And its default opener
follows a redirect, re-sending every header (the bearer token too) to
whatever host the Location names, as a GET that drops the payload while
the final 200 looks like success.

So here:

- a `Deadline` ends the whole request, connect to last body byte: at the
  deadline a timer shuts the connection's socket down, which wakes a
  recv() blocked in any thread (a close() would not) and makes the read
  fail at once;
- the body is read in chunks up to a limit, and more than the limit fails;
- redirects are refused: a 3xx comes back as an HTTPError naming its
  Location, for the caller to report.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

CHUNK = 64 << 10


class Deadline:
    """Shuts down every socket it watches once `seconds` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    """The plain socket's shutdown even for an SSLSocket (whose own method
    would also drop its TLS state under a reader in another thread). A
    socket already closed has no fd any more, so this cannot hit another
    file that reused the number."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTP(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPS(http.client.HTTPSConnection):
    """HTTPSConnection.connect, with the TLS socket watched before its
    handshake (a server can stall the handshake too)."""

    def __init__(self, *args: Any, deadline: Deadline, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._deadline = deadline

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self._deadline.watch(self.sock)
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        self.sock = context.wrap_socket(
            self.sock,
            server_hostname=self._tunnel_host or self.host,  # type: ignore[attr-defined]
            do_handshake_on_connect=False,
        )
        self._deadline.watch(self.sock)
        self.sock.do_handshake()


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_connection(_WatchedHTTP, self._deadline), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = _connection(_WatchedHTTPS, self._deadline)
        return self.do_open(factory, req, context=self._tls)


def _connection(cls: type[_WatchedHTTP] | type[_WatchedHTTPS], deadline: Deadline) -> Any:
    def make(*args: Any, **kw: Any) -> http.client.HTTPConnection:
        return cls(*args, deadline=deadline, **kw)

    return make


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        raise urllib.error.HTTPError(req.full_url, code, msg, headers, fp)


def opener(deadline: Deadline, context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """urllib's default opener (proxies from the environment included)
    with watched connections and redirects refused."""
    return urllib.request.build_opener(
        _RefuseRedirects(), _HttpHandler(deadline), _HttpsHandler(deadline, context)
    )


class TooLarge(Exception):
    """A response body over the limit."""


def read_body(response: Any, limit: int) -> bytes:
    """The whole body, or TooLarge once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read(min(CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"a response body over {limit} bytes")
        chunks.append(chunk)
