"""OTLP transports: gRPC `ProfilesService/Export` and HTTP POST, protobuf bodies.

Both take a serialized ExportProfilesServiceRequest (the bytes the spool
keeps) and either return (with the server's partial-success message, if
any) or raise delivery.Failure saying whether a retry can help. Retryable, as
the OTLP spec lists them: gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
ABORTED, CANCELLED, DATA_LOSS; HTTP 429, 502, 503, 504 (with Retry-After
honoured); and any connection error. Everything else (a 400, INVALID_ARGUMENT)
would fail the same way again, so the payload is dropped and counted.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from agent.daemon.bounded_http import Deadline, TooLarge, opener, read_body
from agent.daemon.delivery import Failure
from agent.daemon.runconfig import ExportConfig
from agent.untrusted import printable

RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
MAX_RESPONSE_BYTES = 4 << 20  # an export response is a partial-success message: small
GRPC_DETAILS = 600  # characters of a gRPC status's details in a Failure
ERROR_BODY_BYTES = 4 << 10  # what the log shows of an error body is cut shorter still
RETRYABLE_GRPC = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "DATA_LOSS"}
)


class Transport(Protocol):
    def send(self, payload: bytes) -> str:
        """Deliver one request; returns the partial-success message ("" if none)."""

    def close(self) -> None: ...


def partial_success(response: Any) -> str:
    ps = response.partial_success
    if ps.rejected_profiles or ps.error_message:
        said = printable(ps.error_message) or "?"
        return f"collector rejected {ps.rejected_profiles} profiles: {said}"
    return ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def check_request(payload: bytes) -> None:
    """ValueError unless `payload` parses as an export request: the spool's
    test of a file it reads back (see agent/daemon/spool.py)."""
    try:
        svc.ExportProfilesServiceRequest.FromString(payload)
    except DecodeError as e:
        raise ValueError(f"not an export request: {e}") from None


def auth_headers(config: ExportConfig) -> list[tuple[str, str]]:
    """Configured headers, plus `authorization: Bearer ...` from the token file,
    re-read on every send so a rotated token is picked up."""
    headers = list(config.headers)
    if config.bearer_token_file:
        try:
            token = Path(config.bearer_token_file).read_text().strip()
        except OSError as e:
            raise Failure(f"cannot read the bearer token file: {e}", True) from None
        headers.append(("authorization", f"Bearer {token}"))
    return headers


class HttpTransport:
    """POST to /v1development/profiles with `application/x-protobuf` bodies.

    The collector's answer is bounded (see bounded_http): the whole request
    ends within `config.timeout`, the body may hold `max_response` bytes (a
    partial-success message is a few hundred), and a redirect is refused.
    Every way the answer can be wrong is a Failure, never another exception.
    """

    def __init__(self, config: ExportConfig, max_response: int = MAX_RESPONSE_BYTES) -> None:
        self.config = config
        self.url = config.url
        self.max_response = max_response
        self._context: ssl.SSLContext | None = None
        if urllib.parse.urlsplit(self.url).scheme == "https":
            self._context = ssl.create_default_context(cafile=config.ca_file or None)
            if config.client_cert_file:
                self._context.load_cert_chain(config.client_cert_file, config.client_key_file)

    def send(self, payload: bytes) -> str:
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "bpfprof"}
        if self.config.compression == "gzip":
            payload = gzip.compress(payload, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        headers.update(auth_headers(self.config))
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        late = Failure(f"no whole answer from {self.url} within {self.config.timeout:g}s", True)
        with Deadline(self.config.timeout) as deadline:
            try:
                body = self._post(request, deadline)
            except urllib.error.HTTPError as e:
                raise late if deadline.expired else self._refusal(e) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                if deadline.expired:
                    raise late from None
                reason = printable(str(getattr(e, "reason", e)))
                raise Failure(f"cannot reach {self.url}: {reason}", True) from None
        if deadline.expired:  # the socket shut down looks like the body's end
            raise late
        try:
            response = svc.ExportProfilesServiceResponse.FromString(body)
        except DecodeError:
            # a 200 means the collector took the data: sending it again
            # would duplicate it, so this request is dropped and counted
            raise Failure(
                f"HTTP 200 from {self.url} with a body that is not an export response: "
                f"{printable(body)}",
                False,
            ) from None
        return partial_success(response)

    def _post(self, request: urllib.request.Request, deadline: Deadline) -> bytes:
        http_opener = opener(deadline, self._context)
        with http_opener.open(request, timeout=self.config.timeout) as response:
            try:
                return read_body(response, self.max_response)
            except TooLarge as e:
                raise Failure(f"HTTP 200 from {self.url} with {e}", False) from None

    def _refusal(self, e: urllib.error.HTTPError) -> Failure:
        """A non-2xx answer as a Failure naming what the collector said
        (escaped, cut): a redirect's Location, or the error body's start."""
        with e:
            retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
            if 300 <= e.code < 400:
                location = printable(e.headers.get("Location", "") if e.headers else "")
                what = f"a redirect to {location or '(no Location)'}, not followed"
                return Failure(f"HTTP {e.code} from {self.url}: {what}", False)
            try:
                said = printable(e.read(ERROR_BODY_BYTES)) if e.fp else ""
            except (OSError, http.client.HTTPException):
                said = ""
        detail = f": {said}" if said else ""
        return Failure(
            f"HTTP {e.code} from {self.url}{detail}", e.code in RETRYABLE_HTTP, retry_after
        )

    def close(self) -> None:
        pass


def grpc_target(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """(host:port, use TLS): an https:// or http:// scheme decides; without
    one, TLS unless `insecure` (OTEL_EXPORTER_OTLP_INSECURE)."""
    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    host = parts.hostname or "localhost"
    port = parts.port or 4317
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parts.scheme == "https":
        return target, True
    if parts.scheme == "http":
        return target, False
    return target, not insecure


class GrpcTransport:
    """ProfilesService/Export through the official generated stub."""

    def __init__(self, config: ExportConfig, max_response: int = MAX_RESPONSE_BYTES) -> None:
        import grpc
        from opentelemetry.proto.collector.profiles.v1development import (
            profiles_service_pb2_grpc as stubs,
        )

        self._grpc = grpc
        self.config = config
        target, tls = grpc_target(config.endpoint, config.insecure)
        # Reconnect soon after a collector restart, not after grpc's default
        # of up to two minutes of exponential reconnect backoff.
        # A response bigger than max_response fails the call (RESOURCE_EXHAUSTED)
        # before it is held in memory; the call's deadline (timeout=) bounds
        # a server that answers slowly or never.
        options = [
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_receive_message_length", max_response),
        ]
        if tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_opt(config.ca_file),
                private_key=_read_opt(config.client_key_file),
                certificate_chain=_read_opt(config.client_cert_file),
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = stubs.ProfilesServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.target = target

    def send(self, payload: bytes) -> str:
        grpc = self._grpc
        try:
            request = svc.ExportProfilesServiceRequest.FromString(payload)
        except DecodeError:
            raise Failure("a request that does not parse (not sent)", False) from None
        metadata = [(k.lower(), v) for k, v in auth_headers(self.config)]
        compression = grpc.Compression.Gzip if self.config.compression == "gzip" else None
        try:
            response = self._stub.Export(
                request, timeout=self.config.timeout, metadata=metadata, compression=compression
            )
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            # grpc's own diagnosis of a failed connection is long and worth
            # keeping whole; a server's status message is cut the same way
            details = printable(str(e.details() if hasattr(e, "details") else e), GRPC_DETAILS)
            raise Failure(
                f"gRPC {code} from {self.target}: {details}", code in RETRYABLE_GRPC
            ) from None
        return partial_success(response)

    def close(self) -> None:
        self._channel.close()


def _read_opt(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def make_transport(config: ExportConfig) -> Transport:
    if config.protocol == "http/protobuf":
        return HttpTransport(config)
    return GrpcTransport(config)
