"""Loopback OTLP profile receivers for the tests: gRPC and HTTP.

The gRPC one is built on the official opentelemetry-proto service stubs, the
HTTP one on http.server; both keep every ExportProfilesServiceRequest they
accept (decoded) and can be stopped and restarted on the same port, to play
a collector that goes away and comes back. Given server credentials (gRPC)
or an ssl.SSLContext (HTTP), they speak TLS and their endpoint is https://.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2 as svc,
)
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2_grpc as stubs,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Received:
    """Requests and the metadata/headers they came with, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Any] = []
        self.headers: list[dict[str, str]] = []

    def add(self, request: Any, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append(request)
            self.headers.append(headers)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.requests)


class _Servicer(stubs.ProfilesServiceServicer):  # type: ignore[misc]
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add(request, dict(context.invocation_metadata()))
        return svc.ExportProfilesServiceResponse()


class GrpcReceiver:
    def __init__(
        self, port: int | None = None, credentials: grpc.ServerCredentials | None = None
    ) -> None:
        self.port = port or free_port()
        self.received = Received()
        self.credentials = credentials
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.credentials else 'http'}://127.0.0.1:{self.port}"

    def _add_service(self, server: Any) -> None:
        stubs.add_ProfilesServiceServicer_to_server(_Servicer(self.received), server)

    def start(self) -> GrpcReceiver:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._add_service(self._server)
        if self.credentials:
            self._server.add_secure_port(f"127.0.0.1:{self.port}", self.credentials)
        else:
            self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None


Answer = Callable[[BaseHTTPRequestHandler], None]


class HttpReceiver:
    """POST /v1development/profiles; optionally answers `fail_with` first,
    then plays the hostile `answers` (see below), one per request. Any GET
    (a client that followed a redirect here) is recorded in `strays`."""

    path = "/v1development/profiles"

    def __init__(self, port: int | None = None, context: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.received = Received()
        self.strays = Received()
        self.fail_with: list[tuple[int, dict[str, str]]] = []  # (status, headers) to answer next
        self.answers: list[Answer] = []
        self.answered = 0  # hostile answers given
        self.context = context
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != receiver.path:
                    self.send_error(404)
                    return
                if receiver.answers:
                    answer = receiver.answers.pop(0)
                    receiver.answered += 1
                    with contextlib.suppress(OSError):  # the client hung up: as it should
                        answer(self)
                    self.close_connection = True
                    return
                if receiver.fail_with:
                    status, headers = receiver.fail_with.pop(0)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = svc.ExportProfilesServiceRequest.FromString(body)
                receiver.received.add(request, {k.lower(): v for k, v in self.headers.items()})
                reply = svc.ExportProfilesServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                receiver.strays.add(self.path, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.context:
            # The handshake runs in accept(); one that fails is an OSError,
            # which socketserver drops quietly, as a collector would.
            self._server.socket = self.context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- hostile HTTP answers: what a broken or malicious collector can send ----


def _head(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()


def body_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """`status` with `body` (e.g. a 200 whose body is not protobuf)."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        _head(h, status, {"Content-Length": str(len(body)), **(headers or {})})
        h.wfile.write(body)

    return answer


def endless_answer(status: int = 200, chunk: int = 1 << 16, limit: int = 1 << 30) -> Answer:
    """A body with no length that never ends (until the client hangs up,
    or `limit` bytes)."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        _head(h, status, {"Content-Type": "application/x-protobuf"})
        block = b"\x0a" * chunk  # field 1, length 10, ...: it parses for a while
        for _ in range(limit // chunk):
            h.wfile.write(block)

    return answer


def slow_answer(every: float = 1.0, size: int = 600, status: int = 200) -> Answer:
    """Headers at once, then a `size`-byte body one byte each `every`
    seconds: each read returns in time, the whole never does."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        _head(h, status, {"Content-Length": str(size)})
        h.wfile.flush()
        for _ in range(size):
            time.sleep(every)
            h.wfile.write(b"\x00")
            h.wfile.flush()

    return answer


def redirect_answer(location: str, status: int = 302) -> Answer:
    return body_answer(status, b"", {"Location": location})


# -- a hostile gRPC collector ---------------------------------------------

SERVICE = "opentelemetry.proto.collector.profiles.v1development.ProfilesService"
GrpcAnswer = Callable[[bytes, Any], bytes]  # (raw request, context) -> raw response


class HostileGrpc(GrpcReceiver):
    """ProfilesService/Export with raw bytes both ways, so an answer can
    be anything: `answers` are played one per call, then a valid empty
    response. `calls` counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[GrpcAnswer] = []
        self.calls = 0

    def _export(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        if self.answers:
            return self.answers.pop(0)(request, context)
        return b""

    def _add_service(self, server: Any) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export)}
        )
        server.add_generic_rpc_handlers((handler,))


def grpc_garbage(_request: bytes, _context: Any) -> bytes:
    return b"\xff\xff\xff\xff not a protobuf message"


def grpc_huge(_request: bytes, _context: Any) -> bytes:
    return b"\x0a" * (64 << 20)


def grpc_slow(seconds: float) -> GrpcAnswer:
    def answer(_request: bytes, _context: Any) -> bytes:
        time.sleep(seconds)
        return b""

    return answer


def grpc_abort(
    details: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> GrpcAnswer:
    def answer(_request: bytes, context: Any) -> bytes:
        context.abort(code, details)
        return b""

    return answer
